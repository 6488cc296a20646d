"""Latency histograms and request counters the AsyncEngine records for the serving metrics.

Plain Python (no prometheus_client): the engine thread observes, any thread reads a
snapshot; `lodger.asgi` renders them in Prometheus' text format.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

# Bucket upper bounds in seconds (+Inf is implied). Small values first: a CPU test model
# answers in milliseconds, a GPU model's inter-token latency is a few milliseconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
               0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
               30.0, 60.0, 120.0, 240.0, 480.0, 960.0)


@dataclass(slots=True)
class Histogram:
    upper_bounds: tuple[float, ...]  # ascending bucket bounds in seconds; +Inf implied
    bucket_counts: list[int] = field(default_factory=list)  # per bucket, not cumulative
    total: float = 0.0  # sum of all observations
    count: int = 0  # number of observations

    def __post_init__(self) -> None:
        assert list(self.upper_bounds) == sorted(self.upper_bounds), "bounds must ascend"
        if not self.bucket_counts:
            self.bucket_counts = [0] * (len(self.upper_bounds) + 1)
        assert len(self.bucket_counts) == len(self.upper_bounds) + 1

    def observe(self, value: float) -> None:
        # bucket i counts values <= upper_bounds[i] (Prometheus' `le`); the last is +Inf
        self.bucket_counts[bisect.bisect_left(self.upper_bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative_counts(self) -> list[int]:
        """Counts per bucket including all smaller buckets; the last equals `count`."""
        running, out = 0, []
        for n in self.bucket_counts:
            running += n
            out.append(running)
        return out

    def copy(self) -> Histogram:
        return Histogram(self.upper_bounds, list(self.bucket_counts), self.total, self.count)


@dataclass(slots=True)
class TimingSnapshot:
    time_to_first_token: Histogram  # seconds from generate() to the first output token
    inter_token_latency: Histogram  # seconds between a request's consecutive outputs
    e2e_request_latency: Histogram  # seconds from generate() to the request's end
    num_aborted_requests: int  # requests aborted (consumer gone, abort(), shutdown)
    num_steps: int  # engine steps run by the thread
    step_cpu_seconds: float  # CPU time the engine thread spent inside EngineCore.step()


class RequestTiming:
    """Written by the engine thread only; `snapshot()` may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ttft = Histogram(TTFT_BUCKETS)
        self._itl = Histogram(ITL_BUCKETS)
        self._e2e = Histogram(E2E_BUCKETS)
        self._num_aborted_requests = 0
        self._num_steps = 0
        self._step_cpu_seconds = 0.0

    def on_step(self, cpu_seconds: float) -> None:
        with self._lock:
            self._num_steps += 1
            self._step_cpu_seconds += cpu_seconds

    def on_output(self, arrival_time: float, last_output_time: float | None, now: float,
                  finished: bool) -> None:
        """One delta of one request reached the dispatcher at `now` (time.monotonic())."""
        with self._lock:
            if last_output_time is None:
                self._ttft.observe(now - arrival_time)
            else:
                self._itl.observe(now - last_output_time)
            if finished:
                self._e2e.observe(now - arrival_time)

    def on_abort(self) -> None:
        with self._lock:
            self._num_aborted_requests += 1

    def snapshot(self) -> TimingSnapshot:
        with self._lock:
            return TimingSnapshot(
                self._ttft.copy(), self._itl.copy(), self._e2e.copy(),
                self._num_aborted_requests, self._num_steps, self._step_cpu_seconds,
            )

