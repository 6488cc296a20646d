"""Skinny matmuls of the decode step: cuBLAS against lodger's Triton kernel (not a test).

    python -m bench.linear [--shapes qwen3-0.6b llama3-8b] [--budget 240] [--json PATH]
                           [--max-rows 512]

For each projection of the model (fused q/k/v, o, fused gate/up, down, LM head) and each
decode batch size, times cuBLAS (F.linear) and every candidate launch configuration of
lodger.kernels.linear the start-up tuner would try, as the step runs them: one CUDA graph
of calls over rotating copies of the weight (over 256 MB in all, so nothing is read from
L2 that a real step would read from memory). Prints per case cuBLAS, the best candidates
and their bandwidth (weight + x + out bytes over time) against 3.0 TB/s. `--max-rows`
offers the tl.dot candidates above the tuner's MAX_TUNED_ROWS (256) too (a 512-row case
has none otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

import torch

from bench.shapes import SHAPES
from lodger.kernels.linear_tuning import MAX_TUNED_ROWS, candidates, time_candidates

ROTATION_BYTES = 256e6
PEAK_BYTES_PER_S = 3.0e12
# (shape, decode batch size) in the order they are run: the batch-1 and nano goals first
CASES = [
    ("llama3-8b", 1),
    ("qwen3-0.6b", 256),
    ("qwen3-0.6b", 128),
    ("qwen3-0.6b", 64),
    ("qwen3-0.6b", 32),
    ("qwen3-0.6b", 1),
    ("qwen3-0.6b", 8),
    ("llama3-8b", 256),
]


def projection_shapes(shape_name: str) -> dict[str, tuple[int, int]]:
    """name -> (N, K) of each weight matrix of one decoder layer and the LM head."""
    shape = SHAPES[shape_name]
    q_size = shape.num_attention_heads * shape.head_dim
    kv_size = shape.num_key_value_heads * shape.head_dim
    hidden, inter = shape.hidden_size, shape.intermediate_size
    return {
        "qkv": (q_size + 2 * kv_size, hidden),
        "o": (hidden, q_size),
        "gate_up": (2 * inter, hidden),
        "down": (hidden, inter),
        "lm_head": (shape.vocab_size, hidden),
    }


def run_case(num_rows: int, num_cols: int, depth: int, top: int, max_rows: int) -> dict:
    weight_bytes = num_cols * depth * 2
    copies = max(2, min(32, int(ROTATION_BYTES // weight_bytes) + 1))
    weights = [
        torch.randn(num_cols, depth, dtype=torch.bfloat16, device="cuda") / depth**0.5
        for _ in range(copies)
    ]
    x = torch.randn(num_rows, depth, dtype=torch.bfloat16, device="cuda")
    moved = weight_bytes + 2 * num_rows * (depth + num_cols)
    # the tuner's own timing and check; failures and wrong outputs are logged to stderr
    times = time_candidates(x, weights, candidates(num_rows, num_cols, depth, max_rows))
    cublas, timed = times.cublas_s, sorted(times.timed, key=lambda item: item[0])
    wrong = [asdict(config) for config, _ in times.wrong]
    return {
        "M": num_rows,
        "N": num_cols,
        "K": depth,
        "copies": copies,
        "cublas_us": round(cublas * 1e6, 2),
        "cublas_tb_s": round(moved / cublas / 1e12, 3),
        "wrong": wrong,
        "best": [
            {"us": round(t * 1e6, 2), "tb_s": round(moved / t / 1e12, 3), **asdict(c)}
            for t, c in timed[:top]
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["llama3-8b", "qwen3-0.6b"])
    parser.add_argument("--budget", type=float, default=240.0, help="seconds; stop after")
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--max-rows", type=int, default=MAX_TUNED_ROWS,
                        help="offer candidates up to this many rows (the tuner: %(default)s)")
    args = parser.parse_args()
    torch.manual_seed(0)
    start, records = time.perf_counter(), []
    print(f"{torch.cuda.get_device_name()}, peak {PEAK_BYTES_PER_S / 1e12} TB/s")
    for shape_name, num_rows in CASES:
        if shape_name in args.shapes:
            for name, (num_cols, depth) in projection_shapes(shape_name).items():
                if time.perf_counter() - start > args.budget:
                    print("budget spent; stopping")
                    break
                record = {
                    "shape": shape_name,
                    "proj": name,
                    **run_case(num_rows, num_cols, depth, args.top, args.max_rows),
                }
                records.append(record)
                best = record["best"][0] if record["best"] else {}
                launch = {
                    k: best.get(k)
                    for k in ("kind", "block_m", "block_n", "block_k", "split_k", "num_stages")
                }
                print(
                    f"{shape_name} {name:8s} M={num_rows:4d} N={num_cols:6d} K={depth:6d} "
                    f"cublas {record['cublas_us']:8.2f} us {record['cublas_tb_s']:.2f} TB/s"
                    f" | best {best.get('us')} us {best.get('tb_s')} TB/s "
                    f"{launch}",
                    flush=True,
                )
                if args.json:
                    with open(args.json, "w") as handle:
                        json.dump(records, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
