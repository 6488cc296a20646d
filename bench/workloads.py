"""Benchmark workloads: prompts of random token ids and per-request output lengths.

Every workload ignores EOS, so each request produces exactly its max_tokens and the work
does not depend on the (random) weights.

- `nano`: nano-vllm's benchmark: random.seed(0); 256 prompts of randint(100, 1024) ids in
  [0, 10000], then max_tokens randint(100, 1024) each; temperature 0.6 (133,966 output tokens).
- `fixed-IN-OUT-N`: N prompts of IN ids, OUT output tokens each, temperature 1.0 (vLLM's
  throughput benchmark samples at 1.0).
- `batch1[-IN-OUT]`: one request of IN ids (default 32) and OUT tokens (default 256), greedy:
  the decode latency of a single stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_PROMPT_ID = 10000  # prompt ids are drawn from [0, MAX_PROMPT_ID], nano-vllm's range


@dataclass(slots=True)
class Workload:
    """One benchmark workload: what every engine is asked to generate."""

    name: str                     # the spec it was parsed from, e.g. "fixed-256-256-1024"
    prompts: list[list[int]]      # prompt token ids per request
    max_tokens: list[int]         # output tokens per request (EOS ignored, so exact)
    temperature: float            # 0 = greedy

    def __post_init__(self) -> None:
        assert len(self.prompts) == len(self.max_tokens) > 0, "one max_tokens per prompt"

    @property
    def num_requests(self) -> int:
        return len(self.prompts)

    @property
    def num_input_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.max_tokens)

    @property
    def is_batch1(self) -> bool:
        return self.name.startswith("batch1")


def nano() -> Workload:
    random.seed(0)  # nano-vllm draws from the module-level generator; so do we, in its order
    prompts = [[random.randint(0, MAX_PROMPT_ID) for _ in range(random.randint(100, 1024))]
               for _ in range(256)]
    max_tokens = [random.randint(100, 1024) for _ in range(256)]
    return Workload("nano", prompts, max_tokens, temperature=0.6)


def fixed(input_len: int, output_len: int, num_requests: int, name: str) -> Workload:
    rng = random.Random(0)
    prompts = [[rng.randint(0, MAX_PROMPT_ID) for _ in range(input_len)]
               for _ in range(num_requests)]
    return Workload(name, prompts, [output_len] * num_requests, temperature=1.0)


def batch1(input_len: int, output_len: int, name: str) -> Workload:
    rng = random.Random(1)
    prompt = [rng.randint(0, MAX_PROMPT_ID) for _ in range(input_len)]
    return Workload(name, [prompt], [output_len], temperature=0.0)


def parse_workload(spec: str, vocab_size: int | None = None) -> Workload:
    """`nano`, `fixed-IN-OUT-N`, `batch1` or `batch1-IN-OUT` -> Workload.

    vocab_size: a model with fewer ids than MAX_PROMPT_ID + 1 gets each prompt id modulo
    vocab_size (the same draws, so lengths and max_tokens do not change).
    """
    workload = _parse(spec)
    if vocab_size is not None and vocab_size <= MAX_PROMPT_ID:
        workload.prompts = [[t % vocab_size for t in p] for p in workload.prompts]
    return workload


def _parse(spec: str) -> Workload:
    parts = spec.split("-")
    try:
        numbers = [int(p) for p in parts[1:]]
    except ValueError:
        numbers = []
    if spec == "nano":
        return nano()
    if parts[0] == "fixed" and len(numbers) == 3 == len(parts) - 1 and min(numbers) > 0:
        return fixed(*numbers, name=spec)
    if spec == "batch1":
        return batch1(32, 256, name=spec)
    if parts[0] == "batch1" and len(numbers) == 2 == len(parts) - 1 and min(numbers) > 0:
        return batch1(*numbers, name=spec)
    raise ValueError(
        f"workload must be 'nano', 'fixed-IN-OUT-N', 'batch1' or 'batch1-IN-OUT' with positive "
        f"integers, got {spec!r}"
    )


def warmup_request() -> tuple[list[int], int]:
    """The one short request every engine runs before the timed part: (prompt ids, tokens)."""
    return [1, 2, 3, 4, 5, 6, 7, 8], 16
