"""Engine counters: what `EngineCore.stats()` and the serving layer's metrics report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(slots=True)
class EngineStats:
    num_running: int = 0  # requests (samples) holding KV blocks and being stepped
    num_waiting: int = 0  # queued or preempted samples
    num_blocks: int = 0  # KV blocks in the pool
    num_free_blocks: int = 0  # blocks with no reference (cached ones included)
    kv_cache_usage: float = 0.0  # share of blocks referenced by requests, 0..1
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens found cached
    num_preemptions: int = 0  # requests preempted (and later recomputed), all time
    num_prompt_tokens: int = 0  # prompt tokens of requests added, all time
    num_generation_tokens: int = 0  # output tokens produced, all time
    num_scheduled_tokens: int = 0  # tokens run through the model, all time
    num_steps: int = 0  # engine steps that ran the model
    num_aborted: int = 0  # samples aborted by the user
    num_finished: dict[str, int] = field(default_factory=dict)  # finish_reason -> requests

    @property
    def prefix_cache_hit_rate(self) -> float:
        if self.prefix_cache_queries == 0:
            return 0.0
        return self.prefix_cache_hits / self.prefix_cache_queries

    def record_step(self, num_scheduled_tokens: int) -> None:
        self.num_steps += 1
        self.num_scheduled_tokens += num_scheduled_tokens

    def record_outputs(self, outputs) -> None:
        for output in outputs:
            for completion in output.outputs:
                self.num_generation_tokens += len(completion.token_ids)
            if output.finished:
                reason = _request_finish_reason(output)
                self.num_finished[reason] = self.num_finished.get(reason, 0) + 1

    def snapshot(self, scheduler_stats) -> EngineStats:
        """A copy with the scheduler's live figures filled in."""
        copy = dataclasses.replace(self, num_finished=dict(self.num_finished))
        copy.num_running = scheduler_stats.num_running
        copy.num_waiting = scheduler_stats.num_waiting
        copy.num_blocks = scheduler_stats.num_blocks
        copy.num_free_blocks = scheduler_stats.num_free_blocks
        copy.kv_cache_usage = scheduler_stats.kv_cache_usage
        copy.prefix_cache_queries = scheduler_stats.prefix_cache_queries
        copy.prefix_cache_hits = scheduler_stats.prefix_cache_hits
        copy.num_preemptions = scheduler_stats.num_preemptions_total
        return copy


def _request_finish_reason(output) -> str:
    """The finish reason of a request's last finishing sample ("stop", "length", "abort")."""
    reasons = [c.finish_reason for c in output.outputs if c.finish_reason is not None]
    return reasons[-1] if reasons else "stop"
