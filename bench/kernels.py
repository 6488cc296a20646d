"""Achieved bandwidth of lodger's Triton kernels on a CUDA GPU (not a test).

    python bench/kernels.py [--sweep] [--json PATH]

Decode attention: batch 1/32/64/128 x context 1k/4k/8k, 32 q heads, 8 kv heads, head_dim
128, bf16, block_size 16, block tables shuffled. Bytes counted are the fewest the op must
move (each sequence's K/V once, q, out, block table); time is the median of CUDA-event
timings with L2 flushed between runs (triton.testing.do_bench), eager and as a CUDA-graph
replay (how the engine runs decode). Prefill/extend attention and the small ops too.
--sweep also times launch configurations and prints the best ones.
"""

import argparse
import itertools
import json
import math
import statistics
import sys
from dataclasses import asdict

import torch
import triton
from triton.testing import do_bench

from lodger.kernels import activation, kv_cache_write, rms_norm, rotary
from lodger.kernels.attention_metadata import AttentionMetadata
from lodger.kernels.decode_attention import DecodeConfig, choose_num_splits, decode_attention
from lodger.kernels.prefill_attention import PrefillConfig, prefill_attention

PEAK_BYTES_PER_S = 3.0e12  # the goal's reference bandwidth (H100 SXM copy ceiling, measured)
NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
DEVICE = "cuda"
ROTATION_BYTES = 256e6  # over 5x the H100's 50 MB L2


def attention_inputs(query_lens: list[int], seq_lens: list[int]):
    """Random q and caches; each sequence owns shuffled blocks of one shared pool."""
    blocks_per_seq = [triton.cdiv(s, BLOCK_SIZE) for s in seq_lens]
    num_blocks = sum(blocks_per_seq)
    cache_shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(cache_shape, device=DEVICE, dtype=DTYPE)
    v_cache = torch.randn(cache_shape, device=DEVICE, dtype=DTYPE)
    perm = torch.randperm(num_blocks, device=DEVICE, dtype=torch.int32)
    block_tables = torch.zeros(len(seq_lens), max(blocks_per_seq), dtype=torch.int32)
    start = 0
    for b, n in enumerate(blocks_per_seq):
        block_tables[b, :n] = perm[start : start + n].cpu()
        start += n
    num_tokens = sum(query_lens)
    q = torch.randn(num_tokens, NUM_Q_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    starts = [0, *itertools.accumulate(query_lens)]
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(num_tokens, dtype=torch.int64, device=DEVICE),  # unused
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        block_tables=block_tables.to(DEVICE),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
    )
    return q, k_cache, v_cache, meta


def attention_bytes(query_lens: list[int], seq_lens: list[int], block_tables) -> int:
    kv = sum(seq_lens) * NUM_KV_HEADS * HEAD_DIM * 2 * DTYPE.itemsize
    q_and_out = 2 * sum(query_lens) * NUM_Q_HEADS * HEAD_DIM * DTYPE.itemsize
    return kv + q_and_out + block_tables.numel() * 4


def attention_flops(query_lens: list[int], seq_lens: list[int]) -> int:
    """QK^T and PV over the keys each query sees (causal)."""
    visible = 0
    for query_len, seq_len in zip(query_lens, seq_lens, strict=True):
        context = seq_len - query_len
        visible += query_len * context + query_len * (query_len + 1) // 2
    return 4 * visible * NUM_Q_HEADS * HEAD_DIM


def median_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def graph_ms(fn) -> float:
    """Median time of a CUDA-graph replay of fn (launch gaps removed)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_ms(graph.replay)


def copy_ceiling() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) of 1 GiB."""
    src = torch.randn(2**29, device=DEVICE, dtype=DTYPE)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.itemsize / (ms * 1e-3)


def decode_case(batch: int, context: int, config: DecodeConfig, graph: bool = True) -> dict:
    """Eager and graph-replay times of one call after an L2 flush; with graph, also the
    per-call time of back-to-back calls rotating over input copies that total more than
    ROTATION_BYTES (steady state of a decode step: each layer reads K/V not in L2)."""
    query_lens, seq_lens = [1] * batch, [context] * batch
    q, k_cache, v_cache, meta = attention_inputs(query_lens, seq_lens)
    out = torch.empty_like(q)
    scale = HEAD_DIM**-0.5
    fn = lambda: decode_attention(q, k_cache, v_cache, meta, scale, config, out=out)
    nbytes = attention_bytes(query_lens, seq_lens, meta.block_tables)
    eager = median_ms(fn)
    row = {
        "batch": batch, "context": context,
        "num_splits": choose_num_splits(batch, NUM_KV_HEADS, context, config),
        "bytes": nbytes, "eager_ms": eager, "eager_tb_s": nbytes / eager / 1e9,
    }  # fmt: skip
    if not graph:
        return row
    replay = graph_ms(fn)
    copies = max(1, min(64, math.ceil(ROTATION_BYTES / nbytes)))
    sets = [(q, k_cache, v_cache, meta)]
    sets += [attention_inputs(query_lens, seq_lens) for _ in range(copies - 1)]
    outs = [torch.empty_like(q) for _ in sets]

    def run_all():
        for (q_i, k_i, v_i, meta_i), out_i in zip(sets, outs, strict=True):
            decode_attention(q_i, k_i, v_i, meta_i, scale, config, out=out_i)

    rotated = graph_ms(run_all) / copies
    return row | {
        "graph_ms": replay, "graph_tb_s": nbytes / replay / 1e9,
        "copies": copies, "rotated_ms": rotated, "rotated_tb_s": nbytes / rotated / 1e9,
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
    out = torch.empty_like(q)
    ms = median_ms(
        lambda: prefill_attention(q, k_cache, v_cache, meta, HEAD_DIM**-0.5, config, out=out)
    )
    nbytes = attention_bytes(query_lens, seq_lens, meta.block_tables)
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


def sweep_decode() -> list[dict]:
    shapes = [(1, 4096), (1, 8192), (32, 4096), (128, 8192)]
    results = []
    for block_n, warps, stages in itertools.product([32, 64, 128], [4, 8], [2, 4]):
        config = DecodeConfig(block_n=block_n, num_warps=warps, num_stages=stages)
        results.append(_score_decode(config, shapes))
    best = DecodeConfig(**max(results, key=lambda r: r["geomean_tb_s"])["config"])
    for target, min_tokens in itertools.product([264, 528, 1056], [128, 256, 512]):
        config = DecodeConfig(
            block_n=best.block_n, num_warps=best.num_warps, num_stages=best.num_stages,
            target_programs=target, min_tokens_per_split=min_tokens,
        )  # fmt: skip
        results.append(_score_decode(config, [*shapes, (64, 1024), (32, 8192)]))
    return sorted(results, key=lambda r: -r["geomean_tb_s"])


def _score_decode(config: DecodeConfig, shapes) -> dict:
    try:
        rates = [decode_case(b, c, config, graph=False)["eager_tb_s"] for b, c in shapes]
    except Exception as error:  # a config the compiler rejects (e.g. too much shared memory)
        print(f"decode {config} failed: {error!r:.200}", file=sys.stderr)
        rates = [1e-9]
    geomean = math.exp(statistics.fmean(math.log(r) for r in rates))
    return {"config": asdict(config), "tb_s": rates, "geomean_tb_s": geomean}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also time launch configurations")
    parser.add_argument("--json", help="write all results to this file")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    report = {
        "device": props.name, "sm_count": props.multi_processor_count,
        "torch": torch.__version__, "triton": triton.__version__,
        "copy_tb_s": copy_ceiling() / 1e12,
    }  # fmt: skip
    print(f"{report['device']}, {report['sm_count']} SMs, torch {torch.__version__}, "
          f"triton {triton.__version__}; copy ceiling {report['copy_tb_s']:.2f} TB/s")  # fmt: skip
    report["decode"] = [
        decode_case(b, c, DecodeConfig()) for b in (1, 32, 64, 128) for c in (1024, 4096, 8192)
    ]
    report["prefill"] = [prefill_case(name, PrefillConfig()) for name in PREFILL_CASES]
    report["small_ops"] = small_ops()
    write_json(report, args.json)
    print_tables(report)
    if args.sweep:
        report["decode_sweep"] = sweep_decode()
        write_json(report, args.json)
        print("\ndecode sweep, best 6 (geomean TB/s over the shapes, eager):")
        for row in report["decode_sweep"][:6]:
            rates = [round(r, 2) for r in row["tb_s"]]
            print(f"  {row['geomean_tb_s']:.3f}  {row['config']}  {rates}")
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
    print(f"\npaged decode attention (bf16, Hq {NUM_Q_HEADS}, Hkv {NUM_KV_HEADS}, D {HEAD_DIM}, "
          f"block {BLOCK_SIZE}); % of {peak:.1f} TB/s. 'single': one call after an L2 flush; "
          f"'steady': back-to-back calls over rotating inputs > {ROTATION_BYTES / 1e6:.0f} MB; "
          "both CUDA-graph replays")  # fmt: skip
    print("| batch | context | splits | MB moved | eager us | single us | single TB/s "
          "| steady us | steady TB/s | steady % |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report["decode"]:
        print(f"| {r['batch']} | {r['context']} | {r['num_splits']} | {r['bytes'] / 1e6:.1f} | "
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
