"""A pre-norm block's RMSNorm and first projection at one row: the RMSNorm kernel then the
GEMV, against the GEMV that normalises its input as it loads it (not a test).

    python -m bench.norm_linear [--shape llama3-8b] [--json PATH]

For the fused q/k/v and gate/up weights of the shape, times each GEMV launch
configuration three ways, as the decode step runs them (one CUDA graph of calls over
rotating copies of the weight, over 256 MB in all): the GEMV alone, the fused residual-add
+ RMSNorm kernel then the GEMV, and the GEMV with the norm fused in. Prints microseconds
per call, best first.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from bench.linear import ROTATION_BYTES, projection_shapes
from lodger.kernels.linear import InputNorm, LinearConfig
from lodger.kernels.linear import linear as triton_linear
from lodger.kernels.linear_tuning import time_graph
from lodger.kernels.rms_norm import fused_add_rms_norm

CONFIGS = [
    LinearConfig(kind="gemv", block_n=block_n, block_k=block_k, num_warps=warps, num_stages=2)
    for block_n in (2, 4, 8, 16, 32)
    for block_k in (512, 1024)
    for warps in (4, 8)
]


def time_ways(num_cols: int, depth: int, config: LinearConfig) -> dict[str, float]:
    """Microseconds per call of the GEMV alone, norm then GEMV, and the fused GEMV."""
    copies = max(2, min(32, int(ROTATION_BYTES // (num_cols * depth * 2)) + 1))
    weights = [
        torch.randn(num_cols, depth, dtype=torch.bfloat16, device="cuda") / depth**0.5
        for _ in range(copies)
    ]
    x, residual = (torch.randn(1, depth, dtype=torch.bfloat16, device="cuda") for _ in "xr")
    norm_weight = torch.ones(depth, dtype=torch.bfloat16, device="cuda")
    summed = torch.empty_like(x)
    norm = InputNorm(norm_weight, 1e-5, residual, summed)

    def unfused(w):
        normed, _ = fused_add_rms_norm(x, residual, norm_weight, 1e-5)
        return triton_linear(normed, w, None, config)

    ways = {
        "gemv": [lambda w=w: triton_linear(x, w, None, config) for w in weights],
        "norm_then_gemv": [lambda w=w: unfused(w) for w in weights],
        "fused": [lambda w=w: triton_linear(x, w, None, config, norm=norm) for w in weights],
    }
    return {name: time_graph(calls) * 1e6 for name, calls in ways.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args(argv)
    results = []
    shapes = projection_shapes(args.shape)
    for name in ("qkv", "gate_up"):
        num_cols, depth = shapes[name]
        for config in CONFIGS:
            times = time_ways(num_cols, depth, config)
            results.append({"weight": name, "N": num_cols, "K": depth, **times,
                            "config": f"n{config.block_n} k{config.block_k} w{config.num_warps}"})
        rows = sorted((r for r in results if r["weight"] == name), key=lambda r: r["fused"])
        print(f"{args.shape} {name} N={num_cols} K={depth} M=1 (us per call)")
        for r in rows:
            print(f"  {r['config']:>14}  fused {r['fused']:6.1f}  norm+gemv "
                  f"{r['norm_then_gemv']:6.1f}  gemv {r['gemv']:6.1f}")
        best_unfused = min(r["norm_then_gemv"] for r in rows)
        print(f"  best fused {rows[0]['fused']:.1f} vs best norm+gemv {best_unfused:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
