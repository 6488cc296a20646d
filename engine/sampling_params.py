"""SamplingParams: how one request is sampled and when it stops (vLLM's fields and meaning).

Plain Python (no torch), so the serving layer can build and validate it cheaply. Every
invalid value raises ValueError naming the field and what it may be.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from numbers import Real

# Temperatures below this are treated as 0: greedy (argmax) sampling.
GREEDY_TEMPERATURE_EPS = 1e-5
# Most top logprobs a request may ask for per token (OpenAI's limit).
MAX_NUM_LOGPROBS = 20
# torch.Generator.manual_seed accepts seeds in [-2**63, 2**64).
_MIN_SEED, _MAX_SEED = -(2**63), 2**64 - 1


@dataclass(slots=True)
class SamplingParams:
    # Number of samples to return for the prompt (each sampled independently).
    n: int = 1
    # Softmax temperature; 0 means greedy (argmax), in which case top_p/top_k/min_p are moot.
    temperature: float = 1.0
    # Nucleus sampling: keep the smallest set of most likely tokens whose mass reaches top_p.
    top_p: float = 1.0
    # Keep only the top_k most likely tokens; 0 or -1 turns it off (stored as 0).
    top_k: int = 0
    # Drop tokens whose probability is below min_p times the most likely token's.
    min_p: float = 0.0
    # Subtracted from the logit of every token that already appears in the output.
    presence_penalty: float = 0.0
    # Subtracted from a token's logit once per time it appears in the output.
    frequency_penalty: float = 0.0
    # Logits of tokens seen in the prompt or the output: divided by it if positive, else
    # multiplied by it (1.0 = off, > 1 discourages repetition).
    repetition_penalty: float = 1.0
    # Seed of this request's own random generator; None draws from the shared one.
    seed: int | None = None
    # Strings that end the output when generated; normalised to a list (empty = none).
    stop: str | list[str] | None = None
    # Token ids that end the output when sampled (in addition to EOS).
    stop_token_ids: list[int] = field(default_factory=list)
    # Keep generating after EOS (benchmarks).
    ignore_eos: bool = False
    # Most tokens to generate; None means up to the model's max_model_len.
    max_tokens: int | None = 16
    # EOS and stop_token_ids cannot be sampled before this many tokens were generated.
    min_tokens: int = 0
    # None: no logprobs; k >= 0: the sampled token's logprob plus the top k of each position.
    logprobs: int | None = None
    # Keep the matched stop string (or stop token's text) at the end of the output text.
    include_stop_str_in_output: bool = False
    # Leave special tokens (e.g. <|im_end|>) out of the output text.
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        self.stop = _normalise_stop(self.stop)
        self.stop_token_ids = _int_list("stop_token_ids", self.stop_token_ids)
        if self.top_k == -1:
            self.top_k = 0
        self._validate_numbers()
        self._validate_lengths()
        _check_bool("ignore_eos", self.ignore_eos)
        _check_bool("include_stop_str_in_output", self.include_stop_str_in_output)
        _check_bool("skip_special_tokens", self.skip_special_tokens)

    def _validate_numbers(self) -> None:
        _check_int("n", self.n, low=1)
        _check_real("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        _check_real("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k)
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 or -1 (off) or at least 1, got {self.top_k}")
        _check_real("min_p", self.min_p)
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check_real(name, value)
            if not -2 <= value <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        _check_real("repetition_penalty", self.repetition_penalty)
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.seed is not None:
            _check_int("seed", self.seed, low=_MIN_SEED)
            if self.seed > _MAX_SEED:
                raise ValueError(f"seed must be in [-2**63, 2**64), got {self.seed}")

    def _validate_lengths(self) -> None:
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, low=1)
        _check_int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}"
            )
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0)
            if self.logprobs > MAX_NUM_LOGPROBS:
                raise ValueError(
                    f"logprobs must be in [0, {MAX_NUM_LOGPROBS}] or None, got {self.logprobs}"
                )

    @property
    def is_greedy(self) -> bool:
        """True when the request takes the most likely token (temperature 0)."""
        return self.temperature < GREEDY_TEMPERATURE_EPS

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0
            or self.frequency_penalty != 0
            or self.repetition_penalty != 1
        )

    def clone(self, **changes) -> SamplingParams:
        """A validated copy with `changes` applied (e.g. n=1, seed=seed + i for a child)."""
        copy = dataclasses.replace(self, **changes)
        if "stop" not in changes:
            copy.stop = list(self.stop)
        if "stop_token_ids" not in changes:
            copy.stop_token_ids = list(self.stop_token_ids)
        return copy


def _normalise_stop(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list | tuple):
        raise ValueError(f"stop must be a string, a list of strings or None, got {stop!r}")
    for item in stops:
        if not isinstance(item, str) or not item:
            raise ValueError(f"stop must hold non-empty strings, got {item!r}")
    return list(stops)


def _int_list(name: str, values) -> list[int]:
    if values is None:
        return []
    if not isinstance(values, list | tuple):
        raise ValueError(f"{name} must be a list of token ids (ints >= 0), got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must hold token ids (ints >= 0), got {value!r}")
    return list(values)


def _check_int(name: str, value, low: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_real(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
