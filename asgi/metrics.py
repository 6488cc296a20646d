"""GET /metrics: the engine's counters in Prometheus' text format, with vLLM's metric names
(so existing vLLM dashboards work), plus a few lodger:-prefixed ones."""

from __future__ import annotations

from lodger.engine.async_engine import AsyncEngine
from lodger.engine.request_timing import Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISH_REASONS = ("stop", "length", "abort")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _escape(value: str) -> str:
    """A label value with backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Writer:
    def __init__(self, model_name: str):
        self.base = {"model_name": model_name}
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        self.lines.append(f"{name}{_labels(self.base | labels)} {_number(value)}")

    def gauge(self, name: str, value: float, help_text: str) -> None:
        self.family(name, "gauge", help_text)
        self.sample(name, value)

    def counter(self, name: str, value: float, help_text: str) -> None:
        assert name.endswith("_total"), "counters end in _total"
        self.family(name, "counter", help_text)
        self.sample(name, value)

    def histogram(self, name: str, hist: Histogram, help_text: str) -> None:
        self.family(name, "histogram", help_text)
        bounds = [*hist.upper_bounds, float("inf")]
        for bound, count in zip(bounds, hist.cumulative_counts(), strict=True):
            self.sample(f"{name}_bucket", count, le=_number(float(bound)))
        self.sample(f"{name}_sum", hist.total)
        self.sample(f"{name}_count", hist.count)


def render_metrics(engine: AsyncEngine, model_name: str, num_in_flight: int) -> str:
    stats, timing = engine.stats(), engine.timing()
    w = _Writer(model_name)
    w.gauge("vllm:num_requests_running", stats.num_running,
            "Number of requests in model execution batches.")
    w.gauge("vllm:num_requests_waiting", stats.num_waiting,
            "Number of requests waiting to be processed.")
    w.gauge("vllm:kv_cache_usage_perc", stats.kv_cache_usage,
            "KV-cache usage. 1 means 100 percent usage.")
    w.counter("vllm:prompt_tokens_total", stats.num_prompt_tokens,
              "Number of prefill tokens processed.")
    w.counter("vllm:generation_tokens_total", stats.num_generation_tokens,
              "Number of generation tokens processed.")
    w.counter("vllm:num_preemptions_total", stats.num_preemptions,
              "Cumulative number of preemptions from the engine.")
    w.counter("vllm:prefix_cache_queries_total", stats.prefix_cache_queries,
              "Prefix cache queries, in terms of number of queried tokens.")
    w.counter("vllm:prefix_cache_hits_total", stats.prefix_cache_hits,
              "Prefix cache hits, in terms of number of cached tokens.")
    finished = dict(stats.num_finished)
    finished["abort"] = finished.get("abort", 0) + timing.num_aborted_requests
    w.family("vllm:request_success_total", "counter", "Count of finished requests by reason.")
    for reason in sorted(set(FINISH_REASONS) | set(finished)):
        w.sample("vllm:request_success_total", finished.get(reason, 0), finished_reason=reason)
    w.histogram("vllm:time_to_first_token_seconds", timing.time_to_first_token,
                "Histogram of time to first token in seconds.")
    w.histogram("vllm:inter_token_latency_seconds", timing.inter_token_latency,
                "Histogram of inter-token latency in seconds.")
    w.histogram("vllm:e2e_request_latency_seconds", timing.e2e_request_latency,
                "Histogram of end to end request latency in seconds.")
    w.gauge("lodger:engine_dead", int(engine.is_dead), "1 when the engine thread has died.")
    w.gauge("lodger:http_requests_in_flight", num_in_flight,
            "Generation requests admitted and not yet answered.")
    w.counter("lodger:engine_steps_total", timing.num_steps, "Engine steps run.")
    w.counter("lodger:engine_step_cpu_seconds_total", timing.step_cpu_seconds,
              "CPU time of the engine thread inside its steps.")
    return "\n".join(w.lines) + "\n"
