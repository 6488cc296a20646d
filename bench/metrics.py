"""Serving metrics, defined as vLLM's benchmark_serving defines them.

- TTFT: send -> first token. TPOT: per request, (latency - TTFT) / (output tokens - 1).
- ITL: every gap between two token-carrying chunks, pooled over all requests.
- Throughputs divide by the run's duration (first send -> last end), counting only
  requests that finished.
"""

from __future__ import annotations

import numpy as np

from bench.load import RequestResult

PERCENTILES = (50, 90, 99)


def distribution_ms(values_s: list[float]) -> dict[str, float]:
    """mean and p50/p90/p99 in milliseconds (all 0.0 when there are no values)."""
    if not values_s:
        return {"mean": 0.0, **{f"p{p}": 0.0 for p in PERCENTILES}}
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    summary = {"mean": round(float(ms.mean()), 3)}
    for p in PERCENTILES:
        summary[f"p{p}"] = round(float(np.percentile(ms, p)), 3)
    return summary


def summarize(results: list[RequestResult], duration_s: float) -> dict:
    assert duration_s > 0, "the run must have taken some time"
    done = [r for r in results if r.success]
    errors = sorted({r.error for r in results if not r.success and r.error})
    output_tokens = sum(r.output_tokens for r in done)
    input_tokens = sum(r.prompt_len for r in done)
    tpot = [(r.latency_s - r.ttft_s) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    return {
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": errors[:5],
        "duration_s": round(duration_s, 3),
        "num_input_tokens": input_tokens,
        "num_output_tokens": output_tokens,
        "req_per_s": round(len(done) / duration_s, 3),
        "output_tok_per_s": round(output_tokens / duration_s, 2),
        "total_tok_per_s": round((input_tokens + output_tokens) / duration_s, 2),
        "ttft_ms": distribution_ms([r.ttft_s for r in done]),
        "tpot_ms": distribution_ms(tpot),
        "itl_ms": distribution_ms([gap for r in done for gap in r.itl_s]),
        "e2el_ms": distribution_ms([r.latency_s for r in done]),
    }
