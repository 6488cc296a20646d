"""ModelRunner.execute on hand-built SchedulerOutputs, against transformers' argmax."""

from __future__ import annotations

import random

import pytest
import torch
from hf_reference import hf_model

from lodger.engine.config import EngineConfig
from lodger.engine.model_config import ModelConfig
from lodger.engine.model_runner import CPU_KV_CACHE_BYTES, ModelRunner
from lodger.engine.request import Request
from lodger.engine.sampling_params import SamplingParams
from lodger.engine.scheduler import SchedulerOutput

BLOCK_SIZE = 4
NUM_BLOCKS = 64
GREEDY = SamplingParams(temperature=0.0, max_tokens=None)


def hf_next_logits(model_dir, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(str(model_dir))(torch.tensor([token_ids])).logits[0, -1]


def make_runner(model_dir, init_kv_cache=True, **options) -> ModelRunner:
    options = {"block_size": BLOCK_SIZE, "num_kv_blocks": NUM_BLOCKS, "max_num_seqs": 8,
               "max_num_batched_tokens": 64, "device": "cpu", "dtype": "float32", **options}
    config = EngineConfig(model=str(model_dir), **options)
    runner = ModelRunner(config, ModelConfig.from_pretrained(model_dir), torch.device("cpu"),
                         torch.float32)
    if init_kv_cache:
        runner.init_kv_cache(runner.profile_num_kv_blocks())
    return runner


class Blocks:
    """Hands out shuffled block ids (never the null block 0) to requests as they grow."""

    def __init__(self, seed: int = 0):
        self.free = list(range(1, NUM_BLOCKS))
        random.Random(seed).shuffle(self.free)

    def cover(self, request: Request, num_tokens: int) -> None:
        while len(request.block_ids) * BLOCK_SIZE < num_tokens:
            request.block_ids.append(self.free.pop())

    def release(self, request: Request) -> None:
        self.free.extend(request.block_ids)
        request.block_ids = []


def make_request(request_id: str, prompt: list[int], params=GREEDY) -> Request:
    return Request(request_id, list(prompt), params, eos_token_id=None, arrival_time=0.0)


def scheduled(requests: list[Request], num_new: list[int], finished=()) -> SchedulerOutput:
    """A SchedulerOutput for requests computing num_new tokens each from their
    num_computed_tokens, sampling where that reaches their last token."""
    return SchedulerOutput(
        scheduled=list(requests),
        num_scheduled_tokens=list(num_new),
        total_num_scheduled_tokens=sum(num_new),
        finished_request_ids=set(finished),
        num_preemptions=0,
        num_computed_tokens=[r.num_computed_tokens for r in requests],
        samples=[
            r.num_computed_tokens + n == r.num_tokens
            for r, n in zip(requests, num_new, strict=True)
        ],
    )


def step(runner, blocks: Blocks, batch: list[tuple[Request, int]], finished=()):
    """Schedule (request, num_new_tokens) pairs, execute, apply like Scheduler.update."""
    for request, num_new in batch:
        blocks.cover(request, request.num_computed_tokens + num_new)
    out = scheduled([r for r, _ in batch], [n for _, n in batch], finished)
    result = runner.execute(out)
    assert len(result.sampled_token_ids) == len(batch) == len(result.logprobs)
    for (request, num_new), token_id in zip(batch, result.sampled_token_ids, strict=True):
        request.num_computed_tokens += num_new
        if token_id is not None:
            request.append_output_token(token_id)
    return result


def prompts(model_dir, lengths, seed=0) -> list[list[int]]:
    vocab_size = ModelConfig.from_pretrained(model_dir).vocab_size
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size, (n,), generator=gen).tolist() for n in lengths]


def test_greedy_tokens_equal_transformers_argmax(model_dir):
    runner = make_runner(model_dir)
    blocks = Blocks()
    a, b, c = (make_request(str(i), p) for i, p in enumerate(prompts(model_dir, [10, 23, 6])))
    first = step(runner, blocks, [(a, 10), (b, 9)])  # b: a mid-prompt chunk
    assert first.sampled_token_ids[1] is None and first.sampled_token_ids[0] is not None
    step(runner, blocks, [(a, 1), (b, 14), (c, 3)])  # c mid-prompt; b's last chunk
    for _ in range(5):
        step(runner, blocks, [(a, 1), (b, 1), (c, 1) if c.num_computed_tokens >= 6 else (c, 3)])
    for request in (a, b, c):
        assert request.num_output_tokens >= 5
        for i in range(request.num_output_tokens):
            context = request.all_token_ids[: request.num_prompt_tokens + i]
            expected = int(hf_next_logits(model_dir, context).argmax())
            assert request.output_token_ids[i] == expected, (request.request_id, i)


def test_logprobs_of_sampled_and_top_tokens(qwen3_dir):
    runner = make_runner(qwen3_dir)
    blocks = Blocks()
    (prompt,) = prompts(qwen3_dir, [9])
    asks = make_request("asks", prompt, SamplingParams(temperature=0.0, logprobs=3))
    plain = make_request("plain", prompt)
    result = step(runner, blocks, [(asks, 9), (plain, 9)])
    assert result.logprobs[1] is None
    position = result.logprobs[0]
    expected = torch.log_softmax(hf_next_logits(qwen3_dir, prompt), dim=-1)
    top = expected.topk(3)
    token_id = result.sampled_token_ids[0]
    assert token_id == int(top.indices[0]) and list(position)[0] == token_id
    assert list(position) == top.indices.tolist()  # greedy: the sampled token is the top one
    for rank, (tid, logprob) in enumerate(position.items(), start=1):
        assert logprob.rank == rank
        assert logprob.logprob == pytest.approx(float(expected[tid]), abs=1e-4)


def test_preempted_request_recomputes_with_new_blocks(llama_dir):
    runner = make_runner(llama_dir)
    blocks = Blocks(seed=1)
    (prompt,) = prompts(llama_dir, [7], seed=2)
    request = make_request("r", prompt)
    step(runner, blocks, [(request, 7)])
    step(runner, blocks, [(request, 1)])
    # preempted: blocks freed, recomputed from scratch (prompt + outputs) in other blocks
    blocks.release(request)
    blocks.free.reverse()
    request.num_computed_tokens = 0
    request.num_preemptions += 1
    step(runner, blocks, [(request, 5)])
    step(runner, blocks, [(request, request.num_tokens - 5)])
    step(runner, blocks, [(request, 1)])
    for i in range(request.num_output_tokens):
        context = request.all_token_ids[: request.num_prompt_tokens + i]
        assert request.output_token_ids[i] == int(hf_next_logits(llama_dir, context).argmax())


def test_finished_requests_drop_runner_state(llama_dir):
    runner = make_runner(llama_dir)
    blocks = Blocks()
    seeded = SamplingParams(temperature=1.0, seed=7)
    a, b = (make_request(str(i), p, seeded) for i, p in enumerate(prompts(llama_dir, [5, 6])))
    step(runner, blocks, [(a, 5), (b, 6)])
    assert set(runner.generators) == {"0", "1"} and set(runner.inputs.rows) == {"0", "1"}
    step(runner, blocks, [(b, 1)], finished={"0"})
    assert set(runner.generators) == {"1"} and set(runner.inputs.rows) == {"1"}


def test_seeded_request_same_tokens_alone_or_batched(llama_dir):
    def run(with_neighbour: bool) -> list[int]:
        runner = make_runner(llama_dir)
        blocks = Blocks()
        p1, p2 = prompts(llama_dir, [8, 5], seed=3)
        seeded = make_request("s", p1, SamplingParams(temperature=1.0, seed=123))
        other = make_request("o", p2, SamplingParams(temperature=1.0))
        for i in range(4):
            batch = [(seeded, 8 if i == 0 else 1)]
            if with_neighbour:
                batch.append((other, 5 if i == 0 else 1))
            step(runner, blocks, batch)
        return seeded.output_token_ids

    assert run(False) == run(True)


def test_cpu_kv_block_count(llama_dir):
    runner = make_runner(llama_dir, num_kv_blocks=None, max_num_seqs=3, max_model_len=100)
    assert runner.profile_num_kv_blocks() == 3 * 25 + 1
    assert runner.kv_cache.shape[2] == 3 * 25 + 1
    k_cache, v_cache = runner.kv_caches[1]
    assert k_cache.data_ptr() != v_cache.data_ptr()
    assert k_cache.shape == (76, BLOCK_SIZE, 2, 16)
    big = make_runner(llama_dir, False, num_kv_blocks=None, max_num_seqs=20000)
    assert big.profile_num_kv_blocks() * big.bytes_per_block <= CPU_KV_CACHE_BYTES


def test_input_preparation_layout(llama_dir):
    runner = make_runner(llama_dir)
    blocks = Blocks()
    a, b = (make_request(str(i), p) for i, p in enumerate(prompts(llama_dir, [6, 9])))
    for request, n in ((a, 6), (b, 7)):
        blocks.cover(request, n)
    a.num_computed_tokens = 5  # a: one new token at position 5; b: a 7-token chunk
    out = scheduled([a, b], [1, 7])
    inputs = runner.prepare_inputs(out)
    assert inputs.input_ids.tolist() == a.all_token_ids[5:6] + b.all_token_ids[:7]
    assert inputs.positions.tolist() == [5, *range(7)]
    slots = [a.block_ids[1] * BLOCK_SIZE + 1] + [
        b.block_ids[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(7)
    ]
    assert inputs.meta.slot_mapping.tolist() == slots
    assert inputs.meta.query_start_loc.tolist() == [0, 1, 8]
    assert inputs.meta.seq_lens.tolist() == [6, 7]
    tables = inputs.meta.block_tables.tolist()  # padded with block 0 to a multiple of 16
    assert [tables[0][:2], tables[1][:2]] == [a.block_ids, b.block_ids]
    assert all(not any(row[2:]) for row in tables) and len(tables[0]) % 16 == 0
    for array in (inputs.input_ids, inputs.positions, inputs.logits_indices,
                  *(getattr(inputs.meta, name) for name in
                    ("slot_mapping", "query_start_loc", "seq_lens", "block_tables"))):
        assert array.data_ptr() % 64 == 0, "every input array starts 64-byte aligned"
    assert inputs.meta.max_query_len == 7 and inputs.meta.max_seq_len == 7
    assert inputs.sample_rows == [0] and inputs.logits_indices.tolist() == [0]


def test_finished_requests_drop_penalty_token_cache(llama_dir):
    runner = make_runner(llama_dir)
    blocks = Blocks()
    penalised = SamplingParams(temperature=0.0, repetition_penalty=1.2)
    a, b = (make_request(str(i), p, penalised) for i, p in enumerate(prompts(llama_dir, [5, 6])))
    step(runner, blocks, [(a, 5), (b, 6)])
    assert len(runner.token_cache) == 2
    step(runner, blocks, [(b, 1)], finished={"0"})
    assert len(runner.token_cache) == 1


def expected_slots(request: Request, start: int, end: int) -> list[int]:
    return [request.block_ids[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
            for p in range(start, end)]


def test_block_rows_resync_when_blocks_are_replaced_without_preemption(llama_dir):
    """A request whose computed tokens moved back (blocks freed and re-admitted) gets its
    block-table row rewritten even if num_preemptions did not change."""
    runner = make_runner(llama_dir, init_kv_cache=False)
    blocks = Blocks(seed=4)
    (prompt,) = prompts(llama_dir, [10])
    request = make_request("r", prompt)
    blocks.cover(request, 8)
    runner.prepare_inputs(scheduled([request], [8]))
    request.num_computed_tokens = 8
    old_blocks = list(request.block_ids)
    blocks.release(request)
    request.num_computed_tokens = 0  # reclaimed: starts over, same num_preemptions
    blocks.free.sort()
    blocks.cover(request, 10)
    assert request.block_ids != old_blocks[: len(request.block_ids)]
    inputs = runner.prepare_inputs(scheduled([request], [10]))
    assert inputs.meta.slot_mapping.tolist() == expected_slots(request, 0, 10)
    assert inputs.meta.block_tables[:, : len(request.block_ids)].tolist() == [request.block_ids]


def test_block_rows_grow_past_max_num_seqs(llama_dir):
    runner = make_runner(llama_dir, init_kv_cache=False, max_num_seqs=2)
    blocks = Blocks()
    requests = [make_request(str(i), p) for i, p in enumerate(prompts(llama_dir, [3, 5, 6]))]
    for request in requests:  # 3 live requests (e.g. 1 preempted) for 2 rows
        blocks.cover(request, request.num_tokens)
        inputs = runner.prepare_inputs(
            scheduled([request], [request.num_tokens])
        )
        assert inputs.meta.slot_mapping.tolist() == expected_slots(request, 0, request.num_tokens)
    assert len({row.index for row in runner.inputs.rows.values()}) == 3
    for request in requests:
        request.num_computed_tokens = request.num_tokens - 1
    inputs = runner.prepare_inputs(scheduled(requests, [1, 1, 1]))
    assert inputs.meta.block_tables[:, :1].flatten().tolist() == [r.block_ids[0] for r in requests]
    assert inputs.meta.slot_mapping.tolist() == [
        expected_slots(r, r.num_tokens - 1, r.num_tokens)[0] for r in requests
    ]


def test_cuda_profile_step_runs_on_cpu(llama_dir):
    """The worst-case step the CUDA profiler measures is device-agnostic: check it runs
    (several max_model_len sequences, logits and every sampling filter) on the CPU."""
    from lodger.engine import cuda_memory

    runner = make_runner(llama_dir, init_kv_cache=False, max_model_len=24,
                         max_num_batched_tokens=60, max_num_seqs=4)
    with torch.inference_mode():
        cuda_memory._worst_case_step(runner)


def test_graph_buckets():
    from lodger.engine.cuda_graphs import batch_buckets

    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert batch_buckets(4096)[-2:] == [256, 512]


class EagerReplay:
    """A captured graph's stand-in on the CPU: replay() runs its bucket's forward eagerly
    from the static inputs into the bucket's output."""

    def __init__(self, graphs, size: int, mixed: bool):
        self.graphs, self.size, self.mixed = graphs, size, mixed

    def replay(self):
        outputs = self.graphs.mixed_outputs if self.mixed else self.graphs.outputs
        outputs[self.size].copy_(self.graphs._forward(self.size, mixed=self.mixed))


def replay_eagerly(graphs, hidden_size: int, mixed: bool) -> None:
    """Give every bucket of `graphs` (token buckets if mixed, else decode batches) an
    EagerReplay and its output buffer, as capture() would a graph."""
    sizes, store, outputs = ((graphs.token_buckets, graphs.mixed_graphs, graphs.mixed_outputs)
                             if mixed else (graphs.buckets, graphs.graphs, graphs.outputs))
    for size in sizes:
        store[size] = EagerReplay(graphs, size, mixed)
        outputs[size] = torch.empty(size, hidden_size)


def replay_against_eager(runner, graphs, out, num_tokens: int) -> None:
    """Replay step `out` through `graphs`, then run it eagerly from the same cache: the
    hidden states and the cache after each must agree, and padding writes nothing."""
    inputs = runner.prepare_inputs(out)
    assert graphs.can_run(inputs)
    cache_before = runner.kv_cache.clone()
    got = graphs.run(inputs)
    cache_after_graph = runner.kv_cache.clone()
    runner.kv_cache.copy_(cache_before)
    inputs = runner.prepare_inputs(out)
    expected = runner.model(inputs.input_ids, inputs.positions, runner.kv_caches, inputs.meta)
    assert got.shape == expected.shape == (num_tokens, runner.model_config.hidden_size)
    # a padded batch may round differently in the matmuls
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(cache_after_graph, runner.kv_cache, rtol=0, atol=1e-5)
    assert not cache_after_graph[:, :, 0].any(), "padding wrote into the null block"


def test_graph_inputs_padding_on_cpu(llama_dir):
    """CudaGraphs' static-buffer plumbing, with each 'graph' replayed eagerly on the CPU:
    after a full bucket, a smaller batch's padding rows must be reset (no cache writes)
    and its real rows must equal an eager step."""
    from lodger.engine.cuda_graphs import CudaGraphs

    runner = make_runner(llama_dir, max_num_seqs=4)
    graphs = CudaGraphs(runner.model, runner.kv_caches, runner.config, runner.max_model_len)
    replay_eagerly(graphs, runner.model_config.hidden_size, mixed=False)
    blocks = Blocks()
    requests = [make_request(str(i), p) for i, p in enumerate(prompts(llama_dir, [5, 9, 7, 4]))]
    step(runner, blocks, [(r, r.num_tokens) for r in requests])
    for request in requests:
        blocks.cover(request, request.num_tokens)
    with torch.inference_mode():
        graphs.run(runner.prepare_inputs(scheduled(requests, [1] * 4)))
        assert graphs.slot_mapping[3] >= 0  # the full bucket filled row 3
        requests[3].num_computed_tokens += 1  # as if its token is now cached
        # bucket 4: row 3 is padding now
        replay_against_eager(runner, graphs, scheduled(requests[:3], [1, 1, 1]), 3)
    assert graphs.slot_mapping[3] == -1 and graphs.seq_lens[3] == 1
    assert int(graphs.block_tables[3].abs().sum()) == 0


def covered_requests(model_dir, lengths: list[int], blocks: Blocks) -> list[Request]:
    """Requests of random prompts of these lengths, each given blocks for its whole prompt."""
    requests = [make_request(str(i), p) for i, p in enumerate(prompts(model_dir, lengths))]
    for request in requests:
        blocks.cover(request, request.num_tokens)
    return requests


def runner_with_prompt_graphs(model_dir, max_num_batched_tokens: int):
    """A CPU runner of 4 sequences whose steps carry the prefill work list (tiles of 4
    queries), and CudaGraphs for it (nothing captured: give its buckets EagerReplays)."""
    from lodger.engine.cuda_graphs import CudaGraphs
    from lodger.engine.step_inputs import InputBuilder

    runner = make_runner(model_dir, max_num_seqs=4, max_num_batched_tokens=max_num_batched_tokens)
    runner.inputs = InputBuilder(BLOCK_SIZE, runner.max_model_len, 4, max_num_batched_tokens,
                                 runner.device, prefill_tile_queries=4)
    graphs = CudaGraphs(runner.model, runner.kv_caches, runner.config, runner.max_model_len,
                        prefill_tile_queries=4)
    return runner, graphs


def test_token_buckets():
    from lodger.engine.cuda_graphs import token_buckets

    assert token_buckets(8192) == [16, 32, 64, 128, 256, 512]
    assert token_buckets(100) == [16, 32, 64, 100]
    assert token_buckets(8) == [8]


def test_mixed_graph_inputs_padding_on_cpu(llama_dir):
    """The static-buffer plumbing of the graphs for steps with prompt tokens, each 'graph'
    replayed eagerly on the CPU: after a larger step, a smaller one's padding tokens,
    sequences and work-list rows must be reset, and its real rows equal an eager step."""
    runner, graphs = runner_with_prompt_graphs(llama_dir, 64)
    assert graphs.token_buckets == [16, 32, 64] and graphs.max_mixed_seqs == 4
    replay_eagerly(graphs, runner.model_config.hidden_size, mixed=True)
    blocks = Blocks()
    requests = covered_requests(llama_dir, [9, 16, 6], blocks)
    with torch.inference_mode():
        # request 1's prompt in two chunks: 13 tokens now, 3 in the next step
        first = runner.prepare_inputs(scheduled(requests, [9, 13, 6]))  # 28 tokens: bucket 32
        assert graphs.can_run(first)
        graphs.run(first)
        assert graphs.prefill_tiles[:3].min() >= 0 and graphs.slot_mapping[27] >= 0
        # request 1's last chunk beside a fresh prompt of 5
        for request, n in zip(requests, [9, 13, 6], strict=True):
            request.num_computed_tokens = n
        late = make_request("late", prompts(llama_dir, [5], seed=1)[0])
        blocks.cover(late, late.num_tokens)
        # 8 tokens: bucket 16, work list of 1 + 2 tiles
        replay_against_eager(runner, graphs, scheduled([requests[1], late], [3, 5]), 8)
    assert (graphs.prefill_tiles[:3] >= 0).all()
    assert (graphs.slot_mapping[8:16] == -1).all() and (graphs.input_ids[8:16] == 0).all()
    assert graphs.mixed_query_start_loc.tolist() == [0, 3, 8, 8, 8]
    capacity = graphs._tile_capacity(16)
    assert (graphs.prefill_tiles[3:capacity] == -1).all()


def test_large_prompt_bucket_replays_like_eager_on_cpu(llama_dir, monkeypatch):
    """A token bucket above MAX_MIXED_GRAPH_TOKENS (kept here by the fixed choice of
    LODGER_PROMPT_GRAPH_TOKENS, as timing needs CUDA): the static inputs are sized for it,
    a step of its size replays like an eager step, and a step past it runs eagerly."""
    from lodger.engine import cuda_graphs

    monkeypatch.setattr(cuda_graphs, "MAX_MIXED_GRAPH_TOKENS", 32)
    monkeypatch.setenv("LODGER_PROMPT_GRAPH_TOKENS", "64")
    runner, graphs = runner_with_prompt_graphs(llama_dir, 128)
    assert graphs.token_buckets == [16, 32] and graphs.large_candidates == [48, 64, 96, 128]
    assert graphs.input_ids.shape[0] == 128 and graphs.max_mixed_seqs == 4
    graphs.token_buckets += graphs._choose_large_buckets()
    assert graphs.token_buckets == [16, 32, 48, 64]
    replay_eagerly(graphs, runner.model_config.hidden_size, mixed=True)
    requests = covered_requests(llama_dir, [23, 17, 30], Blocks())
    with torch.inference_mode():
        replay_against_eager(runner, graphs, scheduled(requests[:2], [23, 17]), 40)  # bucket 48
        assert not graphs.can_run(runner.prepare_inputs(scheduled(requests, [23, 17, 30])))


def test_a_large_bucket_without_memory_is_not_kept_on_cpu(llama_dir, monkeypatch, caplog):
    """The start-up timing with the device out of memory at the 96-token candidate: its
    throwaway graph reports an infinite replay, so it is not kept and the search ends there
    (timings are stand-ins: on the CPU nothing can be captured or timed)."""
    from lodger.engine import cuda_graphs

    monkeypatch.setattr(cuda_graphs, "MAX_MIXED_GRAPH_TOKENS", 32)
    monkeypatch.delenv("LODGER_PROMPT_GRAPH_TOKENS", raising=False)
    runner, graphs = runner_with_prompt_graphs(llama_dir, 128)
    assert graphs.large_candidates == [48, 64, 96, 128]
    real_probe = graphs._throwaway_replay_ms

    def forward(size, mixed=False):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    def probe(size):
        if size < 96:
            return 1.0
        monkeypatch.setattr(graphs, "_forward", forward)
        return real_probe(size)  # the real method, its forward failing as on a full card

    monkeypatch.setattr(graphs, "_throwaway_replay_ms", probe)
    monkeypatch.setattr(cuda_graphs, "median_ms", lambda run: 10.0)
    with caplog.at_level("WARNING", logger=cuda_graphs.__name__):
        assert graphs._choose_large_buckets() == [48, 64]
    assert [(t.size, t.kept) for t in graphs.large_bucket_timings] == [
        (48, True), (64, True), (96, False)]
    assert graphs.large_bucket_timings[-1].replay_ms == float("inf")
    assert "no memory for a prompt-step graph of 96 tokens" in caplog.text
