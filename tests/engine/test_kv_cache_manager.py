"""KVCacheManager: slots for running requests, prefix-cache lookups, chained hashes."""

from lodger.engine.kv_cache_manager import KVCacheManager
from lodger.engine.request import Request
from lodger.engine.sampling_params import SamplingParams

BS = 4  # block size of every test here


def make_request(request_id: str, prompt: list[int]) -> Request:
    return Request(request_id, list(prompt), SamplingParams(max_tokens=8), 2, 0.0)


def compute(kv: KVCacheManager, request: Request, num_tokens: int) -> None:
    """What one scheduled step does to a running request: slots, then computed, then cache."""
    assert kv.allocate_slots(request, num_tokens) == num_tokens
    request.num_computed_tokens += num_tokens
    kv.cache_full_blocks(request)


def admit_and_compute(kv: KVCacheManager, request: Request) -> list[int]:
    """Admit a fresh request with its cached prefix and compute its whole prompt."""
    cached = kv.find_cached_prefix(request)
    num_left = request.num_tokens - len(cached) * BS
    assert kv.admit(request, num_left, cached, num_reserved_blocks=0) == num_left
    request.num_computed_tokens += num_left
    kv.cache_full_blocks(request)
    return cached


def test_allocate_slots_grows_block_table_and_shrinks_to_free_blocks():
    kv = KVCacheManager(BS, num_blocks=4, enable_prefix_caching=False)  # 3 usable
    request = make_request("a", list(range(10, 20)))
    assert kv.admit(request, 6, [], num_reserved_blocks=0) == 6
    assert len(request.block_ids) == 2
    request.num_computed_tokens = 6
    # 4 more tokens need 1 block: ok; then 10 more would need 3, only 0 free after
    assert kv.allocate_slots(request, 2) == 2 and len(request.block_ids) == 2  # fits block 2
    request.num_computed_tokens = 8
    assert kv.allocate_slots(request, 10) == 4  # shrunk to the one free block
    assert len(request.block_ids) == 3 and kv.pool.num_free_blocks == 0
    request.num_computed_tokens = 12
    assert kv.allocate_slots(request, 1) == 0  # nothing fits, nothing taken
    assert len(request.block_ids) == 3
    kv.free(request)
    assert request.block_ids == []
    kv.pool.check_whole()


def test_admit_leaves_reserved_blocks():
    kv = KVCacheManager(BS, num_blocks=6, enable_prefix_caching=False)  # 5 usable
    request = make_request("a", list(range(40)))
    assert kv.admit(request, 40, [], num_reserved_blocks=2) == 3 * BS
    assert kv.pool.num_free_blocks == 2


def test_prefix_hit_across_requests_is_block_aligned_and_never_the_whole_prompt():
    kv = KVCacheManager(BS, num_blocks=16, enable_prefix_caching=True)
    first = make_request("first", list(range(100, 110)))  # 2 full blocks + 2 tokens
    assert admit_and_compute(kv, first) == []
    assert kv.prefix_cache_queries == 10 and kv.prefix_cache_hits == 0
    # same 9 first tokens: block 0 and 1 cover 8 of them
    second = make_request("second", list(range(100, 109)) + [7, 7, 7])
    cached = admit_and_compute(kv, second)
    assert cached == first.block_ids[:2]
    assert kv.pool.blocks[cached[0]].ref_count == 2
    assert second.block_ids[:2] == cached and second.block_ids[2] not in first.block_ids
    assert kv.prefix_cache_queries == 22 and kv.prefix_cache_hits == 8
    # a prompt equal to exactly 2 cached blocks may reuse only the first one
    third = make_request("third", list(range(100, 108)))
    assert kv.find_cached_prefix(third) == first.block_ids[:1]
    # a 1-token prompt never hits
    assert kv.find_cached_prefix(make_request("one", [100])) == []


def test_same_block_under_a_different_prefix_does_not_hit():
    kv = KVCacheManager(BS, num_blocks=16, enable_prefix_caching=True)
    first = make_request("first", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    admit_and_compute(kv, first)
    # block 1 has the same tokens as first's block 1 but block 0 differs
    other = make_request("other", [0, 2, 3, 4, 5, 6, 7, 8, 9])
    assert kv.find_cached_prefix(other) == []
    assert other.block_hashes[1] != first.block_hashes[1]


def test_freed_blocks_hit_until_evicted():
    kv = KVCacheManager(BS, num_blocks=4, enable_prefix_caching=True)  # 3 usable
    first = make_request("first", list(range(9)))  # 3 blocks, 2 full
    admit_and_compute(kv, first)
    kept = list(first.block_ids)
    kv.free(first)
    assert kv.pool.num_free_blocks == 3
    again = make_request("again", list(range(9)))
    assert kv.find_cached_prefix(again) == kept[:2]
    # freeing is last block first: one new block evicts the partial block, then block 1
    filler = make_request("filler", [50] * 4)
    assert kv.admit(filler, 4, [], 0) == 4 and filler.block_ids == [kept[2]]
    assert kv.find_cached_prefix(again) == kept[:2]
    more = make_request("more", [60] * 4)
    assert kv.admit(more, 4, [], 0) == 4 and more.block_ids == [kept[1]]
    assert kv.find_cached_prefix(again) == kept[:1]


def test_blocks_filled_by_generated_tokens_are_cached():
    kv = KVCacheManager(BS, num_blocks=16, enable_prefix_caching=True)
    request = make_request("gen", [1, 2, 3, 4, 5, 6])
    admit_and_compute(kv, request)
    assert len(kv.pool.cached_blocks) == 1
    request.append_output_token(7)
    compute(kv, request, 1)
    request.append_output_token(8)  # sampled, block 1 = [5, 6, 7, 8] not computed yet
    assert len(kv.pool.cached_blocks) == 1
    compute(kv, request, 1)
    assert len(kv.pool.cached_blocks) == 2
    follower = make_request("follower", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert kv.find_cached_prefix(follower) == request.block_ids[:2]


def test_two_copies_of_a_prefix_computed_at_once_both_free_cleanly():
    kv = KVCacheManager(BS, num_blocks=8, enable_prefix_caching=True)
    a, b = make_request("a", list(range(6))), make_request("b", list(range(6)))
    for request in (a, b):
        assert kv.admit(request, 6, kv.find_cached_prefix(request), 0) == 6
    for request in (a, b):
        request.num_computed_tokens = 6
        kv.cache_full_blocks(request)
    assert kv.pool.cached_block_id(a.block_hashes[0]) == a.block_ids[0]
    kv.free(a)
    kv.free(b)
    kv.pool.check_whole()


def test_without_prefix_caching_nothing_is_hashed_or_found():
    kv = KVCacheManager(BS, num_blocks=16, enable_prefix_caching=False)
    first = make_request("first", list(range(12)))
    admit_and_compute(kv, first)
    kv.free(first)
    second = make_request("second", list(range(12)))
    assert kv.find_cached_prefix(second) == []
    assert first.block_hashes == [] and second.block_hashes == []
    assert not kv.pool.cached_blocks
    assert kv.prefix_cache_queries == 0 and kv.prefix_cache_hits == 0


def test_share_prefix_takes_references():
    kv = KVCacheManager(BS, num_blocks=8, enable_prefix_caching=False)
    leader = make_request("0_p", list(range(9)))
    admit_and_compute(kv, leader)
    sibling = make_request("1_p", list(range(9)))
    kv.share_prefix(sibling, leader.block_ids[:2])
    assert sibling.num_computed_tokens == 8 and sibling.block_ids == leader.block_ids[:2]
    assert [kv.pool.blocks[b].ref_count for b in leader.block_ids] == [2, 2, 1]
    kv.free(leader)
    assert [kv.pool.blocks[b].ref_count for b in sibling.block_ids] == [1, 1]
    kv.free(sibling)
    kv.pool.check_whole()
