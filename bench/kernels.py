"""Achieved bandwidth of lodger's Triton kernels on a CUDA GPU (not a test).

    python bench/kernels.py [--sweep] [--json PATH]

Decode attention: batch 1/32/64/128 x context 1k/4k/8k, 32 q heads, 8 kv heads, head_dim
128, bf16, block_size 16, block tables shuffled; then the engine's decode step with
qwen3-0.6b heads (16 q, 8 kv): 256 (and 64) sequences of random lengths, launched as a
CUDA graph captured with max_seq_len 40960 (max_model_len) over block tables that wide.
Bytes counted are the fewest the op must move (each sequence's K/V once, q, out, the block
table entries in use); time is the median of CUDA-event timings with L2 flushed between
runs (triton.testing.do_bench), eager and as a CUDA-graph replay (how the engine runs
decode). Prefill/extend attention and the small ops too. --sweep
[decode|splits|buffers|order|floor|sampling|prefill|all] also times launch configurations
(order: the same kernel over a batch in three orders; floor: batch 1 from a one-tile
context up, with each kernel's share; sampling: the sampling kernel at nano's row counts);
--skip-tables runs the sweep alone.
"""

import argparse
import functools
import itertools
import json
import math
import random
import statistics
import sys
from dataclasses import asdict, dataclass, replace

import torch
import triton
from triton.testing import do_bench

from lodger.kernels import activation, kv_cache_write, rms_norm, rotary
from lodger.kernels.attention_metadata import AttentionMetadata
from lodger.kernels.decode_attention import DecodeConfig, choose_num_splits, decode_attention
from lodger.kernels.prefill_attention import (
    PrefillConfig,
    attach_work_list,
    prefill_attention,
)

PEAK_BYTES_PER_S = 3.0e12  # the goal's reference bandwidth (H100 SXM copy ceiling, measured)
NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
DEVICE = "cuda"
ROTATION_BYTES = 256e6  # over 5x the H100's 50 MB L2
QWEN3_Q_HEADS = 16  # qwen3-0.6b: 16 q heads over 8 kv heads of 128
GRAPH_MAX_SEQ_LEN = 40960  # qwen3-0.6b's max_model_len, baked into captured decode graphs


def attention_inputs(
    query_lens: list[int], seq_lens: list[int], num_q_heads: int = NUM_Q_HEADS,
    max_seq_len: int | None = None,
):  # fmt: skip
    """Random q and caches; each sequence owns shuffled blocks of one shared pool. With
    max_seq_len, meta and the block tables are as wide as a CUDA graph's static ones."""
    blocks_per_seq = [triton.cdiv(s, BLOCK_SIZE) for s in seq_lens]
    num_blocks = sum(blocks_per_seq)
    cache_shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(cache_shape, device=DEVICE, dtype=DTYPE)
    v_cache = torch.randn(cache_shape, device=DEVICE, dtype=DTYPE)
    perm = torch.randperm(num_blocks, device=DEVICE, dtype=torch.int32)
    max_seq_len = max_seq_len or max(seq_lens)
    width = triton.cdiv(max_seq_len, BLOCK_SIZE)
    block_tables = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    start = 0
    for b, n in enumerate(blocks_per_seq):
        block_tables[b, :n] = perm[start : start + n].cpu()
        start += n
    num_tokens = sum(query_lens)
    q = torch.randn(num_tokens, num_q_heads, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    starts = [0, *itertools.accumulate(query_lens)]
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(num_tokens, dtype=torch.int64, device=DEVICE),  # unused
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        block_tables=block_tables.to(DEVICE),
        max_query_len=max(query_lens),
        max_seq_len=max_seq_len,
    )
    return q, k_cache, v_cache, meta


def attention_bytes(
    query_lens: list[int], seq_lens: list[int], num_q_heads: int = NUM_Q_HEADS
) -> int:
    kv = sum(seq_lens) * NUM_KV_HEADS * HEAD_DIM * 2 * DTYPE.itemsize
    q_and_out = 2 * sum(query_lens) * num_q_heads * HEAD_DIM * DTYPE.itemsize
    return kv + q_and_out + sum(triton.cdiv(s, BLOCK_SIZE) for s in seq_lens) * 4


def attention_flops(query_lens: list[int], seq_lens: list[int]) -> int:
    """QK^T and PV over the keys each query sees (causal)."""
    visible = 0
    for query_len, seq_len in zip(query_lens, seq_lens, strict=True):
        context = seq_len - query_len
        visible += query_len * context + query_len * (query_len + 1) // 2
    return 4 * visible * NUM_Q_HEADS * HEAD_DIM


def median_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def capture_graph(fn) -> torch.cuda.CUDAGraph:
    """fn run once (so its kernels are built), then captured in a CUDA graph."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_ms(fn) -> float:
    """Median time of a CUDA-graph replay of fn (launch gaps removed)."""
    return median_ms(capture_graph(fn).replay)


def copy_ceiling() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) of 1 GiB."""
    src = torch.randn(2**29, device=DEVICE, dtype=DTYPE)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.itemsize / (ms * 1e-3)


@dataclass(slots=True)
class DecodeCase:
    """One decode-attention shape: a batch of context lengths over NUM_KV_HEADS kv heads."""

    name: str
    seq_lens: list[int]
    num_q_heads: int = NUM_Q_HEADS
    max_seq_len: int | None = None  # what meta says (a CUDA graph's); None = max(seq_lens)


def uniform_case(name: str, batch: int, low: int, high: int) -> DecodeCase:
    """batch contexts drawn uniformly from [low, high] (seeded), qwen3-0.6b heads, graph width."""
    rng = random.Random(0)
    seq_lens = [rng.randint(low, high) for _ in range(batch)]
    return DecodeCase(name, seq_lens, QWEN3_Q_HEADS, GRAPH_MAX_SEQ_LEN)


def fixed_case(batch: int, context: int) -> DecodeCase:
    return DecodeCase(f"{batch} x {context}", [context] * batch)


DECODE_CASES = [fixed_case(b, c) for b in (1, 32, 64, 128) for c in (1024, 4096, 8192)] + [
    DecodeCase(f"1 x {c} (graph)", [c], NUM_Q_HEADS, GRAPH_MAX_SEQ_LEN) for c in (1024, 4096, 8192)
] + [
    uniform_case("256 x U[100, 2000] (graph)", 256, 100, 2000),
    uniform_case("256 x U[100, 1100] (graph)", 256, 100, 1100),
    uniform_case("64 x U[100, 2000] (graph)", 64, 100, 2000),
]


class DecodeInputs:
    """Input copies of one case totalling more than ROTATION_BYTES (at least one), so that
    back-to-back calls read K/V that is not in L2 (a decode step's layers)."""

    def __init__(self, case: DecodeCase):
        query_lens = [1] * len(case.seq_lens)
        self.case = case
        self.bytes = attention_bytes(query_lens, case.seq_lens, case.num_q_heads)
        copies = max(1, min(64, math.ceil(ROTATION_BYTES / self.bytes)))
        self.sets = [
            attention_inputs(query_lens, case.seq_lens, case.num_q_heads, case.max_seq_len)
            for _ in range(copies)
        ]
        self.outs = [torch.empty_like(q) for q, *_ in self.sets]

    def call(self, config: DecodeConfig, index: int = 0) -> None:
        q, k_cache, v_cache, meta = self.sets[index]
        decode_attention(q, k_cache, v_cache, meta, HEAD_DIM**-0.5, config, out=self.outs[index])

    def call_all(self, config: DecodeConfig) -> None:
        for i in range(len(self.sets)):
            self.call(config, i)


def decode_case(inputs: DecodeInputs, config: DecodeConfig, eager: bool = True) -> dict:
    """Eager and graph-replay times of one call after an L2 flush, and the per-call time of
    back-to-back calls over the rotating copies in one graph (steady state)."""
    case, nbytes = inputs.case, inputs.bytes
    batch, max_seq_len = len(case.seq_lens), case.max_seq_len or max(case.seq_lens)
    row = {
        "case": case.name, "batch": batch, "num_q_heads": case.num_q_heads,
        "mean_context": statistics.fmean(case.seq_lens), "max_seq_len": max_seq_len,
        "num_splits": choose_num_splits(batch, NUM_KV_HEADS, max_seq_len, config), "bytes": nbytes,
    }  # fmt: skip
    if eager:
        row["eager_ms"] = median_ms(lambda: inputs.call(config))
        row["eager_tb_s"] = nbytes / row["eager_ms"] / 1e9
    replay = graph_ms(lambda: inputs.call(config))
    rotated = graph_ms(lambda: inputs.call_all(config)) / len(inputs.sets)
    return row | {
        "graph_ms": replay, "graph_tb_s": nbytes / replay / 1e9, "copies": len(inputs.sets),
        "rotated_ms": rotated, "rotated_tb_s": nbytes / rotated / 1e9,
    }  # fmt: skip


PREFILL_CASES = {
    "prefill 1 x 4096 (fresh prompt)": ([4096], [4096]),
    "prefill 8 x 1024 (fresh prompts)": ([1024] * 8, [1024] * 8),
    "extend 4 x 512 on 3584 cached": ([512] * 4, [4096] * 4),
    "mixed 32 decodes @4k + 512 chunk @2k": ([1] * 32 + [512], [4096] * 32 + [2048]),
}


def prefill_case(name: str, config: PrefillConfig) -> dict:
    query_lens, seq_lens = PREFILL_CASES[name]
    q, k_cache, v_cache, meta = attention_inputs(query_lens, seq_lens)
    attach_work_list(meta, q.shape[1], k_cache.shape[2], config)  # as the engine's inputs
    out = torch.empty_like(q)
    ms = median_ms(
        lambda: prefill_attention(q, k_cache, v_cache, meta, HEAD_DIM**-0.5, config, out=out)
    )
    nbytes = attention_bytes(query_lens, seq_lens)
    flops = attention_flops(query_lens, seq_lens)
    return {
        "case": name, "ms": ms, "bytes": nbytes, "tb_s": nbytes / ms / 1e9,
        "tflop_s": flops / ms / 1e9,
    }  # fmt: skip


def small_ops() -> list[dict]:
    """The elementwise kernels at a prefill-sized batch (8192 tokens, Llama-3-8B widths)."""
    t, hidden, inter = 8192, 4096, 14336
    x = torch.randn(t, hidden, device=DEVICE, dtype=DTYPE)
    residual, weight = torch.randn_like(x), torch.randn(hidden, device=DEVICE, dtype=DTYPE)
    gate_up = torch.randn(t, 2 * inter, device=DEVICE, dtype=DTYPE)
    qkv = torch.randn(t, (NUM_Q_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM, device=DEVICE, dtype=DTYPE)
    q = qkv[:, : NUM_Q_HEADS * HEAD_DIM].view(t, NUM_Q_HEADS, HEAD_DIM)
    k = qkv[:, NUM_Q_HEADS * HEAD_DIM : (NUM_Q_HEADS + NUM_KV_HEADS) * HEAD_DIM]
    k = k.view(t, NUM_KV_HEADS, HEAD_DIM)
    v = qkv[:, (NUM_Q_HEADS + NUM_KV_HEADS) * HEAD_DIM :].view(t, NUM_KV_HEADS, HEAD_DIM)
    cos_sin = torch.randn(8192, HEAD_DIM, device=DEVICE)
    positions = torch.randint(0, 8192, (t,), device=DEVICE)
    k_cache = torch.randn(t // BLOCK_SIZE + 1, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, device=DEVICE)
    k_cache = k_cache.to(DTYPE)
    v_cache = torch.randn_like(k_cache)
    slots = torch.randperm(t, device=DEVICE)
    e = DTYPE.itemsize
    qk_bytes = 2 * t * (NUM_Q_HEADS + NUM_KV_HEADS) * HEAD_DIM * e + t * (8 + HEAD_DIM * 4)
    cases = {
        "rms_norm [8192, 4096]": (lambda: rms_norm.rms_norm(x, weight, 1e-5), 2 * x.numel() * e),
        "fused_add_rms_norm [8192, 4096]": (
            lambda: rms_norm.fused_add_rms_norm(x, residual, weight, 1e-5), 4 * x.numel() * e
        ),
        "silu_and_mul [8192, 2 x 14336]": (
            lambda: activation.silu_and_mul(gate_up), gate_up.numel() * e * 3 // 2
        ),
        "apply_rotary 8192 x (32 + 8) heads": (
            lambda: rotary.apply_rotary(q, k, positions, cos_sin), qk_bytes
        ),
        "write_kv_cache 8192 x 8 heads": (
            lambda: kv_cache_write.write_kv_cache(k, v, k_cache, v_cache, slots),
            4 * t * NUM_KV_HEADS * HEAD_DIM * e + t * 8,
        ),
    }
    rows = []
    for name, (fn, nbytes) in cases.items():
        ms = median_ms(fn)
        rows.append({"op": name, "ms": ms, "tb_s": nbytes / ms / 1e9})
    return rows


# (block_n, num_warps, num_stages), then (target_programs, min_tokens_per_split)
# (3 stages: fewer shared-memory buffers than 4, so more programs fit on an SM, which a
# batch-1 launch of a few hundred latency-bound programs may want; the batch-1 cases' own
# columns say, beside the geometric mean)
SWEEP_TILES = list(itertools.product([32, 64, 128], [4, 8], [2, 3, 4]))
SWEEP_SPLITS = list(itertools.product([264, 528, 1056], [128, 256, 512]))


def sweep_decode() -> list[dict]:
    """Tile shapes with the default split, then the split heuristic with the best tile shape;
    scored by the geometric mean of steady (graph-replayed, rotating-input) TB/s."""
    cases = [fixed_case(1, 4096), fixed_case(1, 8192), fixed_case(32, 4096),
             fixed_case(128, 1024), *DECODE_CASES[-3:-1]]  # fmt: skip
    inputs = [DecodeInputs(case) for case in cases]
    results = []
    for block_n, warps, stages in SWEEP_TILES:
        config = DecodeConfig(block_n=block_n, num_warps=warps, num_stages=stages)
        results.append(_score_decode(config, inputs))
    best = DecodeConfig(**max(results, key=lambda r: r["geomean_tb_s"])["config"])
    for target, min_tokens in SWEEP_SPLITS:
        config = replace(best, target_programs=target, min_tokens_per_split=min_tokens)
        results.append(_score_decode(config, inputs))
    return sorted(results, key=lambda r: -r["geomean_tb_s"])


# deeper pipelines: with the block-table load taking one stage, Triton 3.6 gives K and V two
# buffers from 5 stages on (one below), so a program's next tile loads while it computes;
# (32, 4, 7) three. The default first; offline sm_90 occupancy in docs/benchmarks.md
BUFFER_SWEEP_TILES = [(128, 4, 3), (32, 4, 5), (32, 4, 7), (64, 4, 5), (64, 8, 5)]


def sweep_buffers() -> list[dict]:
    """BUFFER_SWEEP_TILES with the default split, scored like sweep_decode over its cases
    and the 64-sequence graph-width case (nano's middle steps)."""
    cases = [fixed_case(1, 4096), fixed_case(1, 8192), fixed_case(32, 4096),
             fixed_case(128, 1024), *DECODE_CASES[-3:]]  # fmt: skip
    inputs = [DecodeInputs(case) for case in cases]
    return [_score_decode(DecodeConfig(block_n=block_n, num_warps=warps, num_stages=stages),
                          inputs)
            for block_n, warps, stages in BUFFER_SWEEP_TILES]  # fmt: skip


# split counts forced on engine-like batches of 16-128 sequences (nano's middle and tail:
# after the first sequences finish, fewer of them with longer contexts) and on uniform
# 32-sequence batches (the batch-32 goal's shape), two tile shapes
SPLIT_SWEEP_BATCHES = [(16, 100, 2000), (32, 100, 2000), (32, 1000, 2000), (32, 1024, 1024),
                       (32, 4096, 4096), (48, 100, 2000), (64, 100, 2000), (64, 1000, 2000),
                       (128, 100, 2000), (128, 1000, 2000)]  # fmt: skip
SPLIT_SWEEP_COUNTS = [1, 2, 3, 4, 6, 8]
SPLIT_SWEEP_TILES = [(128, 4, 3), (64, 4, 4)]


def forced_splits(splits: int, batch: int, **launch) -> DecodeConfig:
    """A DecodeConfig (launch fields as given) whose heuristic picks exactly `splits` per
    (sequence, kv head) for a batch of `batch` sequences at the graph's width."""
    return DecodeConfig(target_programs=splits * batch * NUM_KV_HEADS, **launch)


def sweep_splits() -> list[dict]:
    """Steady TB/s of each SPLIT_SWEEP_BATCHES case at each forced split count and tile
    shape, beside the count the default heuristic picks."""
    results = []
    for batch, low, high in SPLIT_SWEEP_BATCHES:
        inputs = DecodeInputs(uniform_case(f"{batch} x U[{low}, {high}] (graph)", batch, low, high))
        default = choose_num_splits(batch, NUM_KV_HEADS, GRAPH_MAX_SEQ_LEN, DecodeConfig())
        for block_n, warps, stages in SPLIT_SWEEP_TILES:
            rates = []
            for splits in SPLIT_SWEEP_COUNTS:
                config = forced_splits(splits, batch, block_n=block_n, num_warps=warps,
                                       num_stages=stages)  # fmt: skip
                rates.append(decode_case(inputs, config, eager=False)["rotated_tb_s"])
            row = {"case": inputs.case.name, "tile": [block_n, warps, stages],
                   "splits": SPLIT_SWEEP_COUNTS, "tb_s": rates,
                   "default_splits": default}  # fmt: skip
            print(f"  {row['case']:28s} tile {row['tile']} default {default} splits: "
                  f"{[round(r, 2) for r in rates]}", flush=True)
            results.append(row)
    return results


# engine-like batches (nano's full, middle and tail steps), each timed in three orders of
# the same contexts (as drawn, longest first, shortest first), then longest first at
# forced split counts
ORDER_SWEEP_BATCHES = [(256, 100, 1100), (256, 100, 2000), (128, 100, 2000),
                       (128, 1000, 2000), (64, 100, 2000), (32, 100, 2000)]  # fmt: skip
ORDER_SWEEP_SPLITS = [1, 2, 4]


def sweep_order() -> list[dict]:
    """Steady TB/s of the default kernel over each ORDER_SWEEP_BATCHES case with its
    sequences as drawn, sorted longest first and shortest first; then longest first with
    each of ORDER_SWEEP_SPLITS splits per sequence (the default count is in the row).
    Programs start in batch order, so longest first puts the short programs last (the
    longest-processing-time rule) and shows what the order of a batch costs."""
    results = []
    for batch, low, high in ORDER_SWEEP_BATCHES:
        drawn = uniform_case(f"{batch} x U[{low}, {high}] (graph)", batch, low, high)
        rates, longest = {}, None
        for order, seq_lens in (("drawn", drawn.seq_lens),
                                ("longest first", sorted(drawn.seq_lens, reverse=True)),
                                ("shortest first", sorted(drawn.seq_lens))):  # fmt: skip
            inputs = DecodeInputs(replace(drawn, seq_lens=seq_lens))
            rates[order] = decode_case(inputs, DecodeConfig(), eager=False)["rotated_tb_s"]
            longest = inputs if order == "longest first" else longest
        default = choose_num_splits(batch, NUM_KV_HEADS, GRAPH_MAX_SEQ_LEN, DecodeConfig())
        for splits in ORDER_SWEEP_SPLITS:
            config = forced_splits(splits, batch)
            rates[f"longest first, {splits} splits"] = decode_case(longest, config, eager=False)[
                "rotated_tb_s"
            ]
        row = {"case": drawn.name, "default_splits": default, "tb_s": rates}
        print(f"  {row['case']:28s} ({default} splits) "
              + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()), flush=True)  # fmt: skip
        results.append(row)
    return results


# batch 1 at the graph's width, from a context of one tile (no K/V to speak of: the cost of
# the launches and of each program's dependent loads) up to 8k, at forced split counts
FLOOR_CONTEXTS = [16, 1024, 4096, 8192]
FLOOR_SPLITS = [1, 8, 16, 32, 64]


def sweep_floor() -> list[dict]:
    """Steady µs of batch-1 decode attention at each FLOOR_CONTEXTS context and forced
    split count, and the mean device time of each kernel in a profile of those replays.
    A one-tile context measures the fixed cost of the split kernel alone (1 split) and of
    the split kernel with its merge (more); the longer ones, what streaming K/V adds."""
    results = []
    for context in FLOOR_CONTEXTS:
        inputs = DecodeInputs(DecodeCase(f"1 x {context}", [context], NUM_Q_HEADS,
                                         GRAPH_MAX_SEQ_LEN))  # fmt: skip
        for splits in FLOOR_SPLITS:
            config = forced_splits(splits, 1)
            row = decode_case(inputs, config, eager=False)
            row["kernel_us"] = kernel_means_us(functools.partial(inputs.call_all, config))
            print(f"  {row['case']:10s} splits {row['num_splits']:2d}: steady "
                  f"{row['rotated_ms'] * 1e3:5.1f} us ({row['rotated_tb_s']:.2f} TB/s); "
                  + ", ".join(f"{name} {us:.1f}" for name, us in row["kernel_us"].items()),
                  flush=True)  # fmt: skip
            results.append(row)
    return results


# the sampling kernel over qwen3-0.6b's vocabulary: nano's rows (temperature 0.6), a
# full-batch step of greedy rows, and batch 1
SAMPLING_VOCAB = 151936
SAMPLING_CASES = [(256, 0.6), (128, 0.6), (32, 0.6), (1, 0.6), (256, 0.0)]


def sweep_sampling() -> list[dict]:
    """Graph-replay µs of lodger.kernels.sampling.sample over bf16 logits [rows, vocab] (a
    second kernel picks each row's best split where rows are few); TB/s counts the logits
    read once."""
    from lodger.kernels import sampling

    results = []
    for rows, temperature in SAMPLING_CASES:
        logits = torch.randn(rows, SAMPLING_VOCAB, device=DEVICE).mul_(3).to(DTYPE)
        temperatures = torch.full((rows,), temperature, device=DEVICE)
        seeds = torch.randint(0, 2**62, (rows,), device=DEVICE)
        steps = torch.randint(0, 1000, (rows,), device=DEVICE)
        ms = graph_ms(lambda: sampling.sample(logits, temperatures, seeds, steps))  # noqa: B023
        row = {"rows": rows, "temperature": temperature, "vocab": SAMPLING_VOCAB, "ms": ms,
               "tb_s": logits.numel() * logits.element_size() / ms / 1e9}  # fmt: skip
        print(f"  sample [{rows}, {SAMPLING_VOCAB}] T {temperature}: {ms * 1e3:.1f} us "
              f"({row['tb_s']:.2f} TB/s)", flush=True)  # fmt: skip
        results.append(row)
    return results


def kernel_means_us(fn, replays: int = 20) -> dict[str, float]:
    """Mean device µs of each kernel per launch in `replays` replays of a graph of fn (under
    PDL a kernel's time includes its wait for the one before)."""
    graph = capture_graph(fn)
    graph.replay()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    return {event.key[:40]: event.self_device_time_total / event.count
            for event in prof.key_averages() if event.self_device_time_total > 0}  # fmt: skip


def _score_decode(config: DecodeConfig, inputs: list[DecodeInputs]) -> dict:
    try:
        rates = [decode_case(i, config, eager=False)["rotated_tb_s"] for i in inputs]
    except Exception as error:  # a config the compiler rejects (e.g. too much shared memory)
        print(f"decode {config} failed: {error!r:.200}", file=sys.stderr)
        rates = [1e-9]
    geomean = math.exp(statistics.fmean(math.log(r) for r in rates))
    print(f"  {geomean:.3f}  {[round(r, 2) for r in rates]}  {asdict(config)}", flush=True)
    return {"config": asdict(config), "cases": [i.case.name for i in inputs], "tb_s": rates,
            "geomean_tb_s": geomean}  # fmt: skip


# (block_rows, block_n, num_warps, num_stages)
PREFILL_SWEEP = [
    (64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 3), (64, 128, 4, 2),
    (64, 128, 8, 2), (128, 32, 4, 3), (128, 64, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3),
    (128, 128, 8, 2), (128, 128, 8, 3),
]  # fmt: skip


def sweep_prefill() -> list[dict]:
    names = ["prefill 1 x 4096 (fresh prompt)", "mixed 32 decodes @4k + 512 chunk @2k"]
    results = []
    for rows, block_n, warps, stages in PREFILL_SWEEP:
        config = PrefillConfig(block_rows=rows, block_n=block_n, num_warps=warps, num_stages=stages)
        try:
            ms = [prefill_case(name, config)["ms"] for name in names]
        except Exception as error:
            print(f"prefill {config} failed: {error!r:.200}", file=sys.stderr)
            continue
        results.append({"config": asdict(config), "ms": ms, "sum_ms": sum(ms)})
    return sorted(results, key=lambda r: r["sum_ms"])


# sweeps that print their own rows: name -> (heading, report key, function)
PLAIN_SWEEPS = {
    "splits": ("decode split counts (steady TB/s by forced split count):", "split_sweep",
               sweep_splits),
    "buffers": ("decode pipeline depth (geomean of steady TB/s, then per case):",
                "buffer_sweep", sweep_buffers),
    "order": ("decode batch order (steady TB/s):", "order_sweep", sweep_order),
    "floor": ("batch-1 decode attention by context and split count (steady):", "floor_sweep",
              sweep_floor),
    "sampling": ("sampling (bf16 logits, graph replays):", "sampling_sweep", sweep_sampling),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sweep", nargs="?", const="all",
        choices=["decode", *PLAIN_SWEEPS, "prefill", "all"],
        help="also time launch configurations (default: all)",
    )  # fmt: skip
    parser.add_argument("--json", help="write all results to this file")
    parser.add_argument("--skip-tables", action="store_true",
                        help="only the --sweep, not the attention and small-op tables")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    report = {
        "device": props.name, "sm_count": props.multi_processor_count,
        "torch": torch.__version__, "triton": triton.__version__,
        "copy_tb_s": copy_ceiling() / 1e12,
    }  # fmt: skip
    print(f"{report['device']}, {report['sm_count']} SMs, torch {torch.__version__}, "
          f"triton {triton.__version__}; copy ceiling {report['copy_tb_s']:.2f} TB/s")  # fmt: skip
    if not args.skip_tables:
        report["decode"] = [
            decode_case(DecodeInputs(case), DecodeConfig()) for case in DECODE_CASES
        ]
        report["prefill"] = [prefill_case(name, PrefillConfig()) for name in PREFILL_CASES]
        report["small_ops"] = small_ops()
        write_json(report, args.json)
        print_tables(report)
    if args.sweep in ("decode", "all"):
        print("\ndecode sweep (geomean of steady TB/s, then per case):", flush=True)
        report["decode_sweep"] = sweep_decode()
        write_json(report, args.json)
        print("decode sweep, best 8:")
        for row in report["decode_sweep"][:8]:
            rates = [round(r, 2) for r in row["tb_s"]]
            print(f"  {row['geomean_tb_s']:.3f}  {row['config']}  {rates}")
        # the first two cases are 1 x 4k and 1 x 8k: the batch-1 goal's (60% of the copy rate)
        print("decode sweep, best 4 at batch 1 (1 x 4k, 1 x 8k TB/s):")
        for row in sorted(report["decode_sweep"], key=lambda r: -r["tb_s"][0] * r["tb_s"][1])[:4]:
            print(f"  {round(row['tb_s'][0], 2)}, {round(row['tb_s'][1], 2)}  {row['config']}")
    for name, (heading, key, sweep) in PLAIN_SWEEPS.items():
        if args.sweep in (name, "all"):
            print(f"\n{heading}", flush=True)
            report[key] = sweep()
            write_json(report, args.json)
    if args.sweep in ("prefill", "all"):
        report["prefill_sweep"] = sweep_prefill()
        write_json(report, args.json)
        print("prefill sweep, best 6 (ms per case):")
        for row in report["prefill_sweep"][:6]:
            print(f"  {[round(m, 3) for m in row['ms']]}  {row['config']}")


def write_json(report: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)


def print_tables(report: dict) -> None:
    peak = PEAK_BYTES_PER_S / 1e12
    print(f"\npaged decode attention (bf16, Hkv {NUM_KV_HEADS}, D {HEAD_DIM}, "
          f"block {BLOCK_SIZE}); % of {peak:.1f} TB/s. 'single': one call after an L2 "
          "flush; 'steady': back-to-back calls over rotating inputs > "
          f"{ROTATION_BYTES / 1e6:.0f} MB; both graph replays")  # fmt: skip
    print("| case | Hq | mean context | max_seq_len | splits | MB moved | eager us | single us "
          "| single TB/s | steady us | steady TB/s | steady % |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report["decode"]:
        print(f"| {r['case']} | {r['num_q_heads']} | {r['mean_context']:.0f} | "
              f"{r['max_seq_len']} | {r['num_splits']} | {r['bytes'] / 1e6:.1f} | "
              f"{r['eager_ms'] * 1e3:.1f} | {r['graph_ms'] * 1e3:.1f} | {r['graph_tb_s']:.2f} | "
              f"{r['rotated_ms'] * 1e3:.1f} | {r['rotated_tb_s']:.2f} | "
              f"{100 * r['rotated_tb_s'] / peak:.0f}% |")  # fmt: skip
    print("\npaged prefill/extend attention (same heads)")
    print("| case | us | TB/s | % of 3.0 TB/s | TFLOP/s |")
    print("| --- | --- | --- | --- | --- |")
    for r in report["prefill"]:
        print(f"| {r['case']} | {r['ms'] * 1e3:.1f} | {r['tb_s']:.2f} | "
              f"{100 * r['tb_s'] / peak:.0f}% | {r['tflop_s']:.0f} |")  # fmt: skip
    print("\nsmall ops (bf16)")
    print("| op | us | TB/s |")
    print("| --- | --- | --- |")
    for r in report["small_ops"]:
        print(f"| {r['op']} | {r['ms'] * 1e3:.1f} | {r['tb_s']:.2f} |")


if __name__ == "__main__":
    main()
