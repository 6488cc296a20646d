"""Which steps with prompt tokens above MAX_MIXED_GRAPH_TOKENS get a CUDA graph.

Below that limit every token bucket is captured. Above it, a graph pays only where the
host's launches, not the GPU, set an eager step's time: on a small model an 8,192-token
step is ~12 ms of GPU work behind ~25 ms of Python launches, while on an 8B model a
1,024-token step is GPU-bound already and a graph padded to 2,048 tokens would cost it
more GPU time than it saves host time. So the larger buckets (1,024, 2,048, ... up to the
step's token budget) are chosen by timing at start (`choose_large_buckets`): a bucket is
kept while its predicted replay beats the eager step it would replace at its worst
padding, the smallest step it serves.

`LODGER_PROMPT_GRAPH_TOKENS=N` replaces the timing with a fixed choice: every candidate
of at most N tokens (N = 512: none of them; for tests and A/B runs).

Memory: the graphs' shared pool holds about one forward's activations at the largest
kept bucket, which the KV-cache sizing does not count (it never counted the graphs'
pool); for the small models that keep large buckets that is tens to a few hundred MiB,
inside what gpu_memory_utilization leaves free.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

ENV_OVERRIDE = "LODGER_PROMPT_GRAPH_TOKENS"
# a larger bucket must be predicted this much faster than the eager step it replaces: the
# prediction is a linear extrapolation, and a bucket kept wrongly costs every such step
REQUIRED_SPEEDUP = 0.8


@dataclass
class LargeBucketTiming:
    """The start-up measurement behind one candidate bucket (milliseconds)."""

    size: int
    smallest_step: int  # the fewest tokens a step replaying this bucket has
    predicted_replay_ms: float
    eager_ms: float  # an eager step of smallest_step tokens
    kept: bool


def large_bucket_candidates(small_limit: int, max_num_batched_tokens: int) -> list[int]:
    """Powers of two above small_limit below the token budget, then the budget itself."""
    sizes, size = [], 2 * small_limit
    while size < max_num_batched_tokens:
        sizes.append(size)
        size *= 2
    return [*sizes, max_num_batched_tokens] if max_num_batched_tokens > small_limit else []


def override_limit() -> int | None:
    """LODGER_PROMPT_GRAPH_TOKENS as an int, None when unset."""
    value = os.environ.get(ENV_OVERRIDE, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(f"{ENV_OVERRIDE} must be a whole number of tokens, got {value!r}")
    return int(value)


def choose_large_buckets(
    candidates: Sequence[int], small_limit: int, replay_ms_per_token: float,
    eager_ms: Callable[[int], float],
) -> list[LargeBucketTiming]:  # fmt: skip
    """Candidates in increasing order, each kept while its replay (replay_ms_per_token x
    its size) is predicted at most REQUIRED_SPEEDUP of eager_ms(n) for n its smallest step
    (the previous bucket + 1); the first one that is not ends the search, as a larger
    bucket pads more and its steps are more GPU-bound still."""
    timings = []
    previous = small_limit
    for size in candidates:
        assert size > previous, "candidates must be increasing and above small_limit"
        smallest = previous + 1
        predicted = replay_ms_per_token * size
        eager = eager_ms(smallest)
        kept = predicted <= REQUIRED_SPEEDUP * eager
        timings.append(LargeBucketTiming(size, smallest, predicted, eager, kept))
        if not kept:
            break
        previous = size
    return timings


def median_ms(run: Callable[[], object], repeats: int = 3) -> float:
    """Median wall milliseconds of run() to the device's completion, after one warm-up."""
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)
