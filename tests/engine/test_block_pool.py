"""BlockPool: allocation order, reference counts, LRU eviction of cached blocks."""

import pytest

from lodger.engine.block_pool import NULL_BLOCK_ID, BlockPool, hash_block


def test_null_block_is_never_handed_out():
    pool = BlockPool(num_blocks=5, enable_caching=False)
    assert pool.num_usable_blocks == 4 and pool.num_free_blocks == 4
    block_ids = pool.allocate(4)
    assert sorted(block_ids) == [1, 2, 3, 4] and NULL_BLOCK_ID not in block_ids
    assert pool.num_free_blocks == 0 and pool.usage() == 1.0
    with pytest.raises(RuntimeError, match="only 0 are free"):
        pool.allocate(1)
    pool.free(block_ids)
    pool.check_whole()
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(num_blocks=1, enable_caching=False)


def test_freed_blocks_are_reused_least_recently_freed_first():
    pool = BlockPool(num_blocks=6, enable_caching=False)
    a = pool.allocate(3)  # 1, 2, 3
    assert a == [1, 2, 3]
    pool.free([a[2], a[0]])  # queue: 4, 5, 3, 1
    assert pool.allocate(4) == [4, 5, 3, 1]
    pool.free([1])
    pool.free([3])
    pool.free([2])
    assert pool.allocate(3) == [1, 3, 2]


def test_reference_counts():
    pool = BlockPool(num_blocks=4, enable_caching=False)
    (block_id,) = pool.allocate(1)
    pool.take([block_id])  # a second holder
    assert pool.blocks[block_id].ref_count == 2
    pool.free([block_id])
    assert pool.blocks[block_id].ref_count == 1 and pool.num_free_blocks == 2
    pool.free([block_id])
    assert pool.num_free_blocks == 3
    with pytest.raises(AssertionError, match="double free"):
        pool.free([block_id])
    with pytest.raises(AssertionError, match="double free"):
        pool.free([NULL_BLOCK_ID])


def test_cached_blocks_stay_findable_while_free_and_evict_in_lru_order():
    pool = BlockPool(num_blocks=5, enable_caching=True)
    block_ids = pool.allocate(4)
    hashes = [hash_block(None, [i] * 4) for i in range(4)]
    for block_id, block_hash in zip(block_ids, hashes, strict=True):
        pool.register(block_id, block_hash)
    pool.free(reversed(block_ids))  # queue: 4, 3, 2, 1
    assert [pool.cached_block_id(h) for h in hashes] == block_ids
    # a hit on a free block pulls it out of the middle of the queue
    pool.take([block_ids[2]])
    assert pool.num_free_blocks == 3 and pool.blocks[block_ids[2]].ref_count == 1
    # allocating evicts the least recently freed cached blocks first
    assert pool.allocate(1) == [block_ids[3]]
    assert pool.cached_block_id(hashes[3]) is None
    assert pool.blocks[block_ids[3]].block_hash is None
    assert pool.cached_block_id(hashes[1]) == block_ids[1]
    assert pool.allocate(1) == [block_ids[1]]
    assert pool.cached_block_id(hashes[1]) is None
    assert pool.cached_block_id(hashes[0]) == block_ids[0]
    assert pool.cached_block_id(hashes[2]) == block_ids[2]  # held, not evictable


def test_duplicate_content_keeps_the_first_cached_copy():
    pool = BlockPool(num_blocks=4, enable_caching=True)
    first, second = pool.allocate(2)
    block_hash = hash_block(None, [7, 7])
    pool.register(first, block_hash)
    pool.register(second, block_hash)
    assert pool.cached_block_id(block_hash) == first
    assert pool.blocks[second].block_hash is None
    pool.register(first, block_hash)  # idempotent
    pool.free([first, second])
    assert pool.allocate(2) == [3, first]  # reusing `first` evicts it
    assert pool.cached_block_id(block_hash) is None
    assert not pool.cached_blocks


def test_hash_is_chained_and_deterministic():
    root_a = hash_block(None, [1, 2, 3, 4])
    root_b = hash_block(None, [9, 2, 3, 4])
    assert root_a == hash_block(None, [1, 2, 3, 4])
    assert len(root_a) == 16
    # the same block tokens under a different prefix hash differently
    assert hash_block(root_a, [5, 6, 7, 8]) != hash_block(root_b, [5, 6, 7, 8])
    assert hash_block(root_a, [5, 6, 7, 8]) == hash_block(root_a, (5, 6, 7, 8))
    assert hash_block(None, [1, 2]) != hash_block(None, [2, 1])
