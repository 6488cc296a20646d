"""Which steps with prompt tokens above MAX_MIXED_GRAPH_TOKENS get a CUDA graph.

Below that limit every token bucket is captured. Above it, a graph pays only where the
host's launches, not the GPU, set an eager step's time: on a small model an 8,192-token
step is ~12 ms of GPU work behind ~25 ms of Python launches, while on an 8B model a
1,024-token step is GPU-bound already and a graph padded to 2,048 tokens would cost it
more GPU time than it saves host time. So the larger buckets (768, 1,024, 1,536, 2,048,
... up to the step's token budget: powers of two and 1.5x them, so a step pads by at most
a third) are chosen by timing at start (`choose_large_buckets`): a bucket is kept while a
throwaway graph of its size replays faster than the eager step it would replace at its
worst padding, the smallest step it serves.

`LODGER_PROMPT_GRAPH_TOKENS=N` replaces the timing with a fixed choice: every candidate
of at most N tokens (N = 512: none of them; for tests and A/B runs).

Memory: the graphs' shared pool holds about one forward's activations at the largest
kept bucket, which the KV-cache sizing does not count (it never counted the graphs'
pool); for the small models that keep large buckets that is tens to a few hundred MiB,
inside what gpu_memory_utilization leaves free, and CudaGraphs.capture logs what it took
(`memory_bytes`). A candidate whose throwaway graph finds no memory is not kept.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

ENV_OVERRIDE = "LODGER_PROMPT_GRAPH_TOKENS"
# a larger bucket's replay must be this much faster than the eager step it replaces: both
# are medians of three timings, and a bucket kept wrongly costs every step it serves
REQUIRED_SPEEDUP = 0.9


@dataclass
class LargeBucketTiming:
    """The start-up measurement behind one candidate bucket (milliseconds)."""

    size: int
    smallest_step: int  # the fewest tokens a step replaying this bucket has
    replay_ms: float  # a throwaway graph of this size
    eager_ms: float  # an eager step of smallest_step tokens
    kept: bool


def large_bucket_candidates(small_limit: int, max_num_batched_tokens: int) -> list[int]:
    """1.5x and 2x small_limit, 1.5x and 2x that, ... below the token budget, then the
    budget itself (small_limit a multiple of 32: every candidate below the budget is a
    multiple of 16, as Triton's launches specialize on)."""
    assert small_limit % 2 == 0, small_limit
    sizes, size = [], small_limit
    while True:
        sizes += [size + size // 2, 2 * size]
        size *= 2
        if sizes[-1] >= max_num_batched_tokens:
            break
    below = [s for s in sizes if s < max_num_batched_tokens]
    return [*below, max_num_batched_tokens] if max_num_batched_tokens > small_limit else []


def override_limit() -> int | None:
    """LODGER_PROMPT_GRAPH_TOKENS as an int, None when unset."""
    value = os.environ.get(ENV_OVERRIDE, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(f"{ENV_OVERRIDE} must be a whole number of tokens, got {value!r}")
    return int(value)


def choose_large_buckets(
    candidates: Sequence[int], small_limit: int, replay_ms: Callable[[int], float],
    eager_ms: Callable[[int], float],
) -> list[LargeBucketTiming]:  # fmt: skip
    """Candidates in increasing order, each kept while replay_ms(its size) is at most
    REQUIRED_SPEEDUP of eager_ms(n) for n its smallest step (the previous bucket + 1); the
    first one that is not ends the search, as a larger bucket's steps are more GPU-bound
    still."""
    timings = []
    previous = small_limit
    for size in candidates:
        assert size > previous, "candidates must be increasing and above small_limit"
        smallest = previous + 1
        eager = eager_ms(smallest)
        replay = replay_ms(size)
        kept = replay <= REQUIRED_SPEEDUP * eager
        timings.append(LargeBucketTiming(size, smallest, replay, eager, kept))
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
