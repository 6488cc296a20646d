"""The load generator of the serving benchmark: streamed completions at Poisson arrivals.

Requests go to an OpenAI-compatible `/v1/completions` on the loopback interface only, with
token-id prompts, `ignore_eos` and `return_token_ids` (vLLM's extensions), so every chunk
says how many tokens it carries. Each run is bounded: at most the workload's requests, and
requests still open after `max_seconds` are cancelled and counted as failed.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np

from bench.workloads import Workload

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(slots=True)
class RequestResult:
    """What the client saw of one request."""

    prompt_len: int
    success: bool = False
    error: str | None = None
    output_tokens: int = 0               # from the usage chunk, else counted from the chunks
    ttft_s: float = 0.0                  # send -> first chunk carrying a token
    latency_s: float = 0.0               # send -> end of the stream
    itl_s: list[float] = field(default_factory=list)  # gaps between token-carrying chunks


def arrival_offsets(num_requests: int, rate: float, seed: int) -> np.ndarray:
    """Send times (s from the start) of a Poisson process of `rate` requests/s; inf: all at 0."""
    if rate == float("inf"):
        return np.zeros(num_requests)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=num_requests)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def check_loopback(base_url: str) -> None:
    host = urlparse(base_url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"the benchmark only sends to the loopback interface, got host {host!r}")


async def _one_request(client, url: str, body: dict, result: RequestResult) -> None:
    sent = time.perf_counter()
    last = None
    counted = 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if chunk.get("usage"):
                result.output_tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or []
            num_tokens = sum(len(c.get("token_ids") or []) or bool(c.get("text"))
                             for c in choices)
            if num_tokens == 0:
                continue
            now = time.perf_counter()
            if last is None:
                result.ttft_s = now - sent
            else:
                result.itl_s.append(now - last)
            last = now
            counted += num_tokens
    result.latency_s = time.perf_counter() - sent
    result.output_tokens = result.output_tokens or counted
    result.success = last is not None


async def run_load(base_url: str, model: str, workload: Workload, rate: float,
                   max_concurrency: int | None, max_seconds: float,
                   seed: int = 0) -> tuple[list[RequestResult], float]:
    """Send the workload's requests; returns (results, seconds from first send to last end)."""
    import httpx

    check_loopback(base_url)
    url = base_url.rstrip("/") + "/v1/completions"
    offsets = arrival_offsets(workload.num_requests, rate, seed)
    semaphore = asyncio.Semaphore(max_concurrency or workload.num_requests)
    results = [RequestResult(prompt_len=len(p)) for p in workload.prompts]
    limits = httpx.Limits(max_connections=max_concurrency or workload.num_requests)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        start = time.perf_counter()

        async def send(i: int) -> None:
            await asyncio.sleep(max(0.0, start + offsets[i] - time.perf_counter()))
            body = {"model": model, "prompt": workload.prompts[i],
                    "max_tokens": workload.max_tokens[i], "temperature": workload.temperature,
                    "ignore_eos": True, "return_token_ids": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            async with semaphore:
                try:
                    await _one_request(client, url, body, results[i])
                except (httpx.HTTPError, json.JSONDecodeError, KeyError) as error:
                    results[i].error = f"{type(error).__name__}: {error}"

        tasks = [asyncio.create_task(send(i)) for i in range(workload.num_requests)]
        _, pending = await asyncio.wait(tasks, timeout=max_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        duration = time.perf_counter() - start
    for result in results:
        if not result.success and result.error is None:
            result.error = f"unfinished after {max_seconds:.0f} s"
    return results, duration
