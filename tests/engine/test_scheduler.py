"""Scheduler, driven by a fake runner that simulates the paged KV cache (no model, no torch)."""

import dataclasses
import random
import subprocess
import sys
from collections import Counter

import pytest

from lodger.engine.request import Request, RequestStatus
from lodger.engine.sampling_params import SamplingParams
from lodger.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput

EOS = 2


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=8, max_num_batched_tokens=64,
                   max_model_len=256, enable_prefix_caching=True) -> Scheduler:
    return Scheduler(SchedulerConfig(block_size, num_blocks, max_num_seqs,
                                     max_num_batched_tokens, max_model_len, enable_prefix_caching))


def make_request(request_id, prompt, parent_id=None, **params) -> Request:
    params.setdefault("max_tokens", 5)
    return Request(request_id, list(prompt), SamplingParams(temperature=0, **params), EOS, 0.0,
                   parent_id=parent_id)


def next_token(request: Request) -> int:
    """The fake model: a deterministic function of the tokens so far, never EOS (10..59)."""
    tokens = request.all_token_ids
    return (sum(tokens[-3:]) * 31 + len(tokens)) % 50 + 10


class FakeRunner:
    """Writes each computed token into a simulated paged cache and reads every context token
    back through the block table, so a wrong prefix hit, a shared block overwritten or a
    block freed too early shows up as a wrong token."""

    def __init__(self, scheduler: Scheduler, sample=next_token):
        self.scheduler = scheduler
        self.sample = sample
        self.slots: dict[int, int] = {}

    def slot(self, request: Request, position: int) -> int:
        bs = self.scheduler.block_size
        return request.block_ids[position // bs] * bs + position % bs

    def execute(self, out: SchedulerOutput, previous: dict | None = None) -> list[int | None]:
        """`previous` (async scheduling): request id -> the token the previous step sampled
        for it, which the scheduler has not been updated with yet."""
        pool = self.scheduler.kv.pool
        sampled = []
        for request, num_new, start, samples in zip(
            out.scheduled, out.num_scheduled_tokens, out.num_computed_tokens, out.samples,
            strict=True,
        ):
            end = start + num_new
            assert end == request.num_computed_tokens
            if end > request.num_tokens:  # computes the token still being sampled
                token = previous[request.request_id]
                request = dataclasses.replace(
                    request, all_token_ids=request.all_token_ids + [token],
                    output_token_ids=request.output_token_ids + [token],
                )
            assert 0 < end <= request.num_tokens and samples == (end == request.num_tokens)
            max_tokens = request.sampling_params.max_tokens or self.scheduler.config.max_model_len
            assert not samples or (  # never a token past the request's limits
                request.num_output_tokens < max_tokens
                and end < self.scheduler.config.max_model_len
            ), request.request_id
            for position in range(start):
                assert self.slots[self.slot(request, position)] == request.all_token_ids[position]
            for position in range(start, end):
                block = pool.blocks[request.block_ids[position // self.scheduler.block_size]]
                assert block.ref_count == 1 and block.block_hash is None, "write to shared block"
                self.slots[self.slot(request, position)] = request.all_token_ids[position]
            sampled.append(self.sample(request) if samples else None)
        return sampled


def check_invariants(scheduler: Scheduler) -> None:
    pool = scheduler.kv.pool
    refs = Counter(b for r in scheduler.requests.values() for b in r.block_ids)
    for block in pool.blocks[1:]:
        assert block.ref_count == refs[block.block_id], block.block_id
        assert (block.ref_count == 0) == (block.block_id in pool.free_queue)
    for block_hash, block in pool.cached_blocks.items():
        assert block.block_hash == block_hash
    bs = scheduler.block_size
    for request in scheduler.running:
        assert request.status == RequestStatus.RUNNING
        assert len(request.block_ids) == -(-request.num_computed_tokens // bs)
    assert len(scheduler.running) <= scheduler.config.max_num_seqs


def run(scheduler: Scheduler, runner: FakeRunner | None = None, max_steps=10_000, on_step=None):
    """Step until every request finishes; returns the SchedulerOutputs."""
    runner = runner or FakeRunner(scheduler)
    outputs = []
    while scheduler.has_unfinished_requests():
        assert len(outputs) < max_steps, "scheduler made no progress"
        out = scheduler.schedule()
        assert out.total_num_scheduled_tokens == sum(out.num_scheduled_tokens) > 0, "stuck"
        assert out.total_num_scheduled_tokens <= scheduler.config.max_num_batched_tokens
        scheduler.update(out, runner.execute(out))
        check_invariants(scheduler)
        outputs.append(out)
        if on_step:
            on_step(len(outputs), out)
    scheduler.kv.pool.check_whole()
    return outputs


def run_async(scheduler: Scheduler, runner: FakeRunner, max_steps=10_000) -> int:
    """Step as EngineCore does under async scheduling: schedule and execute step N before
    updating with step N-1's tokens. Returns the most placeholders a request had."""
    in_flight = None  # (SchedulerOutput, sampled) of the step not yet updated
    num_steps = most_placeholders = 0
    while scheduler.has_unfinished_requests() or in_flight:
        num_steps += 1
        assert num_steps < max_steps, "scheduler made no progress"
        out = scheduler.schedule()
        assert out.total_num_scheduled_tokens == sum(out.num_scheduled_tokens)
        assert out.scheduled or in_flight, "stuck"
        most_placeholders = max(
            [most_placeholders, *(r.num_output_placeholders for r in out.scheduled)]
        )
        launched = None
        if out.scheduled:
            previous = {} if in_flight is None else {
                r.request_id: t
                for r, t in zip(in_flight[0].scheduled, in_flight[1], strict=True)
                if t is not None
            }
            launched = (out, runner.execute(out, previous))
        if in_flight:
            scheduler.update(*in_flight)
            check_invariants(scheduler)
        in_flight = launched
    scheduler.kv.pool.check_whole()
    return most_placeholders


def expected_output(prompt, num_tokens) -> list[int]:
    request = make_request("ref", prompt)
    for _ in range(num_tokens):
        request.append_output_token(next_token(request))
    return request.output_token_ids


def test_modules_do_not_import_torch():
    code = ("import sys\n"
            "import lodger.engine.scheduler, lodger.engine.kv_cache_manager\n"
            "import lodger.engine.block_pool, lodger.engine.request\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_requests_finish_with_their_tokens_and_the_pool_is_whole():
    scheduler = make_scheduler()
    prompts = [list(range(1 + i, 8 + 3 * i)) for i in range(5)]
    requests = [make_request(f"r{i}", p, max_tokens=3 + i) for i, p in enumerate(prompts)]
    for request in requests:
        scheduler.add_request(request)
    run(scheduler)
    for i, request in enumerate(requests):
        assert request.status == RequestStatus.FINISHED_LENGTH
        assert request.output_token_ids == expected_output(prompts[i], 3 + i)
        assert request.block_ids == []
    stats = scheduler.stats()
    assert (stats.num_running, stats.num_waiting, stats.kv_cache_usage) == (0, 0, 0.0)
    assert stats.num_free_blocks == stats.num_blocks == 63


def test_chunked_prefill_under_a_small_budget_mixes_with_decodes():
    scheduler = make_scheduler(max_num_batched_tokens=8)
    first = make_request("first", range(10, 13), max_tokens=6)  # 3 tokens
    scheduler.add_request(first)
    run_one = FakeRunner(scheduler)
    out = scheduler.schedule()
    scheduler.update(out, run_one.execute(out))
    second = make_request("second", range(20, 40), max_tokens=2)  # 20 tokens
    scheduler.add_request(second)
    steps = []
    for _ in range(3):
        out = scheduler.schedule()
        sampled = run_one.execute(out)
        steps.append((list(zip([r.request_id for r in out.scheduled],
                                out.num_scheduled_tokens, strict=True)), sampled[-1]))
        scheduler.update(out, sampled)
    # the decode takes 1 token, the prompt gets the rest of the budget, chunk by chunk
    assert [s[0] for s in steps] == [[("first", 1), ("second", 7)], [("first", 1), ("second", 7)],
                                     [("first", 1), ("second", 6)]]
    assert [s[1] is None for s in steps] == [True, True, False]  # sampled only at the end
    assert second.num_computed_tokens == 20 and second.num_output_tokens == 1
    run(scheduler, run_one)
    assert second.output_token_ids == expected_output(range(20, 40), 2)


def test_a_step_of_one_token_each_runs_longest_context_first():
    scheduler = make_scheduler(max_num_batched_tokens=64)
    prompts = {"short": [3, 4], "long": list(range(3, 15)), "mid": list(range(3, 9)),
               "tie": list(range(4, 10))}  # fmt: skip
    requests = [make_request(request_id, prompt, max_tokens=3)
                for request_id, prompt in prompts.items()]  # fmt: skip
    for request in requests:
        scheduler.add_request(request)
    runner = FakeRunner(scheduler)
    out = scheduler.schedule()  # prompts: admission order
    assert [r.request_id for r in out.scheduled] == ["short", "long", "mid", "tie"]
    scheduler.update(out, runner.execute(out))
    out = scheduler.schedule()  # decodes: longest first, "mid" before "tie" as admitted
    assert [r.request_id for r in out.scheduled] == ["long", "mid", "tie", "short"]
    assert out.num_computed_tokens == [12, 6, 6, 2]
    scheduler.update(out, runner.execute(out))
    scheduler.add_request(make_request("late", range(3, 23), max_tokens=2))
    out = scheduler.schedule()  # a prompt joins: the order above, no sorting
    assert [r.request_id for r in out.scheduled] == ["short", "long", "mid", "tie", "late"]
    scheduler.update(out, runner.execute(out))
    run(scheduler, runner)
    for request in requests:
        assert request.output_token_ids == expected_output(prompts[request.request_id], 3)


def test_max_num_seqs_caps_running_requests():
    scheduler = make_scheduler(max_num_seqs=3)
    for i in range(7):
        scheduler.add_request(make_request(f"r{i}", [i + 3] * 5, max_tokens=4))
    seen = []
    run(scheduler, on_step=lambda n, out: seen.append(len(out.scheduled)))
    assert max(seen) == 3
    assert scheduler.stats().num_running == 0


def test_admission_is_first_come_first_served():
    scheduler = make_scheduler(num_blocks=9, max_num_batched_tokens=64)  # 8 usable blocks
    big = make_request("big", range(3, 23), max_tokens=2)  # 20 tokens = 5 blocks
    small = make_request("small", [5, 6], max_tokens=2)
    blocker = make_request("blocker", range(3, 15), max_tokens=8)  # 3 blocks
    for request in (blocker, big, small):
        scheduler.add_request(request)
    out = scheduler.schedule()
    # big gets a chunk of the 4 free blocks (1 kept in reserve); small may not overtake it
    assert [r.request_id for r in out.scheduled] == ["blocker", "big"]
    assert out.num_scheduled_tokens == [12, 16]
    runner = FakeRunner(scheduler)
    scheduler.update(out, runner.execute(out))
    run(scheduler, runner)


def test_prefix_cache_hits_across_requests():
    scheduler = make_scheduler()
    prefix = list(range(40, 49))  # 2 full blocks + 1
    first = make_request("first", prefix + [1, 1], max_tokens=3)
    scheduler.add_request(first)
    runner = FakeRunner(scheduler)  # one simulated cache for all three
    run(scheduler, runner)
    second = make_request("second", prefix + [7, 7, 7], max_tokens=3)
    # block 1 has the same tokens as prefix block 1, under another block 0: no hit
    third = make_request("third", [0] + prefix[1:] + [1, 1], max_tokens=3)
    scheduler.add_request(second)
    scheduler.add_request(third)
    out = scheduler.schedule()
    assert out.num_computed_tokens == [8, 0] and out.num_scheduled_tokens == [4, 11]
    assert second.num_cached_tokens == 8 and third.num_cached_tokens == 0
    scheduler.update(out, runner.execute(out))
    run(scheduler, runner)
    assert second.output_token_ids == expected_output(prefix + [7, 7, 7], 3)
    stats = scheduler.stats()
    assert stats.prefix_cache_queries == 11 + 12 + 11 and stats.prefix_cache_hits == 8


@pytest.mark.parametrize("caching", [True, False])
def test_preemption_under_a_tiny_pool_loses_no_work(caching):
    prompts = [list(range(3 + i, 10 + i)) for i in range(4)]  # 7 tokens each
    scheduler = make_scheduler(num_blocks=9, enable_prefix_caching=caching)  # 8 usable
    requests = [make_request(f"r{i}", p, max_tokens=12) for i, p in enumerate(prompts)]
    for request in requests:
        scheduler.add_request(request)
    preemptions = []
    run(scheduler, on_step=lambda n, out: preemptions.append(out.num_preemptions))
    assert sum(preemptions) > 0 and scheduler.stats().num_preemptions_total == sum(preemptions)
    assert any(r.num_preemptions for r in requests)
    assert [r.output_token_ids for r in requests] == [expected_output(p, 12) for p in prompts]
    assert all(r.status == RequestStatus.FINISHED_LENGTH for r in requests)


def test_preempted_request_goes_back_to_the_front_and_the_oldest_keeps_running():
    scheduler = make_scheduler(num_blocks=5, max_num_seqs=2)  # 4 usable blocks of 4 tokens
    old = make_request("old", [3] * 4, max_tokens=10)  # up to 13 tokens = 4 blocks
    new = make_request("new", [4] * 4, max_tokens=10)
    later = make_request("later", [5] * 2, max_tokens=2)
    for request in (old, new, later):
        scheduler.add_request(request)
    runner = FakeRunner(scheduler)
    while not new.num_preemptions:
        out = scheduler.schedule()
        scheduler.update(out, runner.execute(out))
    assert out.num_preemptions == 1 and new.status == RequestStatus.PREEMPTED
    assert list(scheduler.waiting) == [new, later]
    assert new.block_ids == [] and new.num_computed_tokens == 0 and new.num_output_tokens > 0
    assert old.status == RequestStatus.RUNNING and old in out.scheduled
    run(scheduler, runner)
    assert new.output_token_ids == expected_output([4] * 4, 10)


def test_stop_conditions():
    def sample_eos(request):  # EOS at output 2, stop token 77 at output 4, else 50
        return {1: EOS, 3: 77}.get(request.num_output_tokens, 50)

    cases = {
        "eos": ({}, 2, RequestStatus.FINISHED_STOPPED, None),
        "ignore_eos": ({"ignore_eos": True}, 8, RequestStatus.FINISHED_LENGTH, None),
        # EOS at output 2 is too early, stop token 77 at output 4 stops
        "min_tokens": ({"min_tokens": 3, "stop_token_ids": [77]}, 4,
                       RequestStatus.FINISHED_STOPPED, 77),
        "min_tokens_both": ({"min_tokens": 5}, 8, RequestStatus.FINISHED_LENGTH, None),
        "stop_id": ({"ignore_eos": True, "stop_token_ids": [77]}, 4,
                    RequestStatus.FINISHED_STOPPED, 77),
        "max_model_len": ({"ignore_eos": True, "max_tokens": None}, 6,
                          RequestStatus.FINISHED_LENGTH, None),
    }
    for name, (params, num_output, status, stop_reason) in cases.items():
        scheduler = make_scheduler(max_model_len=10)
        params = {"max_tokens": 8, **params}
        request = make_request(name, [5, 6] if name != "max_model_len" else [5, 6, 7, 8],
                               **params)
        scheduler.add_request(request)
        run(scheduler, FakeRunner(scheduler, sample_eos))
        assert request.num_output_tokens == num_output, name
        assert (request.status, request.stop_reason) == (status, stop_reason), name


def test_stop_token_wins_over_max_tokens_on_the_same_token():
    scheduler = make_scheduler()
    request = make_request("r", [5, 6], max_tokens=2)
    scheduler.add_request(request)
    run(scheduler, FakeRunner(scheduler, lambda r: EOS if r.num_output_tokens == 1 else 50))
    assert request.status == RequestStatus.FINISHED_STOPPED


def test_finish_request_in_every_state_returns_blocks():
    scheduler = make_scheduler(num_blocks=33, max_num_seqs=3, max_num_batched_tokens=16)
    runner = FakeRunner(scheduler)
    decoding = make_request("decoding", [3] * 6, max_tokens=20)
    prefilling = make_request("prefilling", [4] * 60, max_tokens=20)
    waiting = make_request("waiting", [5] * 6)
    leader = make_request("0_p", [6] * 9, parent_id="p")
    held = make_request("1_p", [6] * 9, parent_id="p")
    for request in (decoding, prefilling, waiting, leader, held):
        scheduler.add_request(request)
    for _ in range(2):
        out = scheduler.schedule()
        scheduler.update(out, runner.execute(out))
    assert decoding.num_output_tokens == 2 and prefilling.num_computed_tokens == 25
    assert waiting.status == RequestStatus.WAITING and held in scheduler.held["p"]
    scheduler.finish_request("waiting", RequestStatus.FINISHED_ABORTED)
    scheduler.finish_request("1_p", RequestStatus.FINISHED_ABORTED)
    scheduler.finish_request("prefilling", RequestStatus.FINISHED_ABORTED)
    scheduler.finish_request("decoding", RequestStatus.FINISHED_STOPPED, stop_reason="\n\n")
    assert decoding.stop_reason == "\n\n" and prefilling.block_ids == []
    scheduler.finish_request("decoding", RequestStatus.FINISHED_ABORTED)  # finished: no-op
    scheduler.finish_request("unknown", RequestStatus.FINISHED_ABORTED)
    assert decoding.status == RequestStatus.FINISHED_STOPPED
    out = scheduler.schedule()
    assert out.finished_request_ids == {"waiting", "1_p", "prefilling", "decoding"}
    scheduler.update(out, runner.execute(out))
    scheduler.finish_request("0_p", RequestStatus.FINISHED_ABORTED)
    with pytest.raises(ValueError, match="FINISHED_"):
        scheduler.finish_request("x", RequestStatus.RUNNING)
    assert not scheduler.has_unfinished_requests()
    scheduler.kv.pool.check_whole()


def test_abort_of_preempted_and_of_released_sibling_returns_blocks():
    scheduler = make_scheduler(num_blocks=5)
    old = make_request("old", [3] * 4, max_tokens=10)
    new = make_request("new", [4] * 4, max_tokens=10)
    scheduler.add_request(old)
    scheduler.add_request(new)
    runner = FakeRunner(scheduler)
    while not new.num_preemptions:
        out = scheduler.schedule()
        scheduler.update(out, runner.execute(out))
    scheduler.finish_request("new", RequestStatus.FINISHED_ABORTED)
    assert new.status == RequestStatus.FINISHED_ABORTED and new not in scheduler.waiting
    scheduler.finish_request("old", RequestStatus.FINISHED_ABORTED)
    scheduler.kv.pool.check_whole()
    # a sibling holding shared prompt blocks while it waits for a seat
    scheduler = make_scheduler(max_num_seqs=1)
    leader = make_request("0_p", [6] * 9, parent_id="p")
    sibling = make_request("1_p", [6] * 9, parent_id="p")
    scheduler.add_request(leader)
    scheduler.add_request(sibling)
    out = scheduler.schedule()
    scheduler.update(out, FakeRunner(scheduler).execute(out))
    assert sibling.status == RequestStatus.WAITING and len(sibling.block_ids) == 2
    scheduler.finish_request("1_p", RequestStatus.FINISHED_ABORTED)
    scheduler.finish_request("0_p", RequestStatus.FINISHED_ABORTED)
    scheduler.kv.pool.check_whole()


@pytest.mark.parametrize("caching", [True, False])
def test_n_children_share_the_prompt_blocks(caching):
    scheduler = make_scheduler(enable_prefix_caching=caching)
    prompt = list(range(30, 41))  # 11 tokens: 2 shareable full blocks
    children = [make_request(f"{i}_p", prompt, parent_id="p", max_tokens=4) for i in range(3)]
    for child in children:
        scheduler.add_request(child)
    runner = FakeRunner(scheduler)
    out = scheduler.schedule()
    assert out.scheduled == [children[0]]  # siblings wait for the leader's prompt
    assert scheduler.stats().num_waiting == 2
    scheduler.update(out, runner.execute(out))
    shared = children[0].block_ids[:2]
    assert [scheduler.kv.pool.blocks[b].ref_count for b in shared] == [3, 3]
    for sibling in children[1:]:
        assert sibling.block_ids == shared and sibling.num_computed_tokens == 8
    out = scheduler.schedule()
    assert out.num_scheduled_tokens == [1, 3, 3]
    scheduler.update(out, runner.execute(out))
    assert all(c.num_cached_tokens == (0 if i == 0 else 8) for i, c in enumerate(children))
    run(scheduler, runner)
    for child in children:
        assert child.output_token_ids == expected_output(prompt, 4)


def test_waiting_siblings_give_back_shared_blocks_when_a_request_needs_the_whole_pool():
    # 8 usable blocks; "big" comes to need all of them while sibling 2_p, waiting for a
    # seat, is the last holder of the leader's 2 prompt blocks (the leader and 1_p having
    # given theirs back). Without reclaiming them, big would preempt itself and stall.
    scheduler = make_scheduler(num_blocks=9, max_num_seqs=2, enable_prefix_caching=False)
    big = make_request("big", [3] * 4, max_tokens=29)  # K/V of 32 tokens = 8 blocks
    assert scheduler.check_fits(4 + 29) is None and scheduler.check_fits(4 + 30) is not None
    leader = make_request("0_p", [6] * 9, parent_id="p", max_tokens=1)
    first = make_request("1_p", [6] * 9, parent_id="p", max_tokens=20)
    second = make_request("2_p", [6] * 9, parent_id="p", max_tokens=1)
    for request in (leader, first, second, big):
        scheduler.add_request(request)
    run(scheduler)
    assert big.num_output_tokens == 29 and big.num_preemptions == 0
    assert first.num_preemptions > 0 and first.num_output_tokens == 20
    assert second.num_output_tokens == 1 and second.num_cached_tokens == 0  # recomputed


def test_admission_reclaims_blocks_held_only_by_waiting_requests():
    # a safety net: waiting siblings whose leaders are gone hold the whole pool and nothing
    # runs; the front request must still be admitted (white-box set-up of that state)
    scheduler = make_scheduler(num_blocks=5, enable_prefix_caching=False)  # 4 usable
    first, second = make_request("first", [6] * 9), make_request("second", [7] * 9)
    scheduler.add_request(first)
    scheduler.add_request(second)
    donor = scheduler.kv.pool.allocate(4)
    scheduler.kv.share_prefix(first, donor[:2])
    scheduler.kv.share_prefix(second, donor[2:])
    scheduler.kv.pool.free(donor)
    assert scheduler.kv.pool.num_free_blocks == 0
    run(scheduler)
    assert first.output_token_ids == expected_output([6] * 9, 5)
    assert second.output_token_ids == expected_output([7] * 9, 5)


def test_check_fits_and_config_errors():
    scheduler = make_scheduler(num_blocks=9)  # 8 usable blocks of 4 = 32 cached tokens
    assert scheduler.check_fits(33) is None
    message = scheduler.check_fits(34)
    assert "needs 9 KV blocks" in message and "only 8" in message
    with pytest.raises(ValueError, match="max_num_seqs must be a positive integer"):
        make_scheduler(max_num_seqs=0)
    with pytest.raises(ValueError, match="already scheduled"):
        scheduler.add_request(make_request("a", [1]))
        scheduler.add_request(make_request("a", [1]))
    with pytest.raises(ValueError, match="'big'.*needs 9 KV blocks"):
        scheduler.add_request(make_request("big", [1] * 30, max_tokens=4))
    scheduler.add_request(make_request("0_p", [1] * 5, parent_id="p"))
    with pytest.raises(ValueError, match="must share one prompt"):
        scheduler.add_request(make_request("1_p", [2] * 5, parent_id="p"))
    assert sorted(scheduler.requests) == ["0_p", "a"]  # rejected ones left no trace
    out = scheduler.schedule()
    assert len(out.scheduled) == 2
    with pytest.raises(ValueError, match="sampled has 0 entries"):
        scheduler.update(out, [])
    runner = FakeRunner(scheduler)
    scheduler.update(out, runner.execute(out))
    run(scheduler, runner)


@pytest.mark.parametrize("seed", range(6))
def test_random_traffic_with_aborts_keeps_every_invariant(seed):
    """Random prompts sharing prefixes, n > 1 groups, a small pool and random aborts:
    every finished request has exactly the reference tokens and the pool ends whole."""
    import random

    rng = random.Random(seed)
    scheduler = make_scheduler(num_blocks=rng.choice([10, 16, 24]), max_num_seqs=rng.choice([2, 5]),
                               max_num_batched_tokens=rng.choice([8, 16, 64]),
                               enable_prefix_caching=seed % 2 == 0)
    runner = FakeRunner(scheduler)
    prefixes = [[rng.randrange(3, 99) for _ in range(rng.randrange(1, 12))] for _ in range(3)]
    requests, aborted = [], set()

    def add(step):
        prompt = rng.choice(prefixes) + [rng.randrange(3, 99) for _ in range(rng.randrange(1, 9))]
        max_tokens = rng.randrange(1, 20)
        if scheduler.check_fits(len(prompt) + max_tokens) is not None:
            return
        n = rng.choice([1, 1, 3])
        for i in range(n):
            request_id = f"{i}_{step}" if n > 1 else f"{step}"
            request = make_request(request_id, prompt, parent_id=str(step) if n > 1 else None,
                                   max_tokens=max_tokens)
            requests.append(request)
            scheduler.add_request(request)

    for step in range(300):
        if step < 150 and rng.random() < 0.4:
            add(step)
        if rng.random() < 0.05 and scheduler.requests:
            victim = rng.choice(sorted(scheduler.requests))
            scheduler.finish_request(victim, RequestStatus.FINISHED_ABORTED)
            aborted.add(victim)
        out = scheduler.schedule()
        assert out.total_num_scheduled_tokens <= scheduler.config.max_num_batched_tokens
        if scheduler.requests:
            assert out.total_num_scheduled_tokens > 0, "stuck"
        scheduler.update(out, runner.execute(out))
        check_invariants(scheduler)
    run(scheduler, runner)
    for request in requests:
        assert request.is_finished and request.block_ids == []
        if request.request_id not in aborted:
            expected = expected_output(request.prompt_token_ids, request.num_output_tokens)
            assert request.output_token_ids == expected
            assert request.num_output_tokens == request.sampling_params.max_tokens


def sample_sometimes_eos(request: Request) -> int:
    token = next_token(request)
    return EOS if token % 7 == 0 and request.num_output_tokens >= 2 else token


def async_scenario(caching: bool) -> tuple[Scheduler, list[Request]]:
    """A crowd that preempts (small pool), chunks (small budget), hits the prefix cache,
    stops on EOS, max_tokens and max_model_len, and has n > 1 siblings."""
    rng = random.Random(1)
    scheduler = make_scheduler(num_blocks=24, max_num_seqs=6, max_num_batched_tokens=20,
                               max_model_len=40, enable_prefix_caching=caching)
    prefix = [rng.randrange(10, 60) for _ in range(9)]
    requests = []
    for i in range(14):
        tail = [rng.randrange(10, 60) for _ in range(rng.randint(1, 12))]
        prompt = (prefix if i % 2 else []) + tail
        max_tokens = None if i == 5 else rng.randint(1, 14)
        requests.append(make_request(f"r{i}", prompt, max_tokens=max_tokens, ignore_eos=i % 3 == 0))
    prompt = [rng.randrange(10, 60) for _ in range(10)]
    requests += [make_request(f"{i}_p", prompt, parent_id="p", max_tokens=6) for i in range(3)]
    for request in requests:
        scheduler.add_request(request)
    return scheduler, requests


@pytest.mark.parametrize("caching", [True, False])
def test_async_scheduling_gives_the_same_tokens(caching):
    """Scheduling each step before the previous one's tokens are in (placeholders, the
    runner reading the pending token from the previous step) ends every request exactly as
    synchronous scheduling does, through preemption, chunking, EOS and limits."""
    expected, requests = async_scenario(caching)
    run(expected, FakeRunner(expected, sample_sometimes_eos))
    scheduler, got = async_scenario(caching)
    most_placeholders = run_async(scheduler, FakeRunner(scheduler, sample_sometimes_eos))
    assert most_placeholders == 2, "a step was scheduled past one whose tokens were pending"
    assert scheduler.num_preemptions_total > 0
    statuses = Counter(r.status for r in got)
    assert statuses[RequestStatus.FINISHED_STOPPED] and statuses[RequestStatus.FINISHED_LENGTH]
    for want, have in zip(requests, got, strict=True):
        assert have.output_token_ids == want.output_token_ids, have.request_id
        assert (have.status, have.stop_reason) == (want.status, want.stop_reason)
    if caching:
        assert scheduler.kv.prefix_cache_hits > 0
