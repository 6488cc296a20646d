"""What the engine hands back: vLLM-shaped request outputs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Logprob:
    logprob: float  # natural log of the token's probability under the raw model distribution
    rank: int | None = None  # 1-based rank of the token in that distribution
    decoded_token: str | None = None  # the token's text, filled by the output processor


# One position: token id -> Logprob. The sampled token comes first, then the top-k.
SampleLogprobs = dict[int, Logprob]


@dataclass(slots=True)
class CompletionOutput:
    index: int  # which of the request's n samples this is
    text: str  # from EngineCore.step(): this step's new text; from LLM.generate: all of it
    token_ids: list[int]  # likewise: new ids (step) or all ids (generate)
    cumulative_logprob: float | None  # sum of the sampled tokens' logprobs, when logprobs asked
    logprobs: list[SampleLogprobs] | None  # one entry per token in token_ids, when asked
    finish_reason: str | None = None  # "stop" | "length" | "abort", None while running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestMetrics:
    arrival_time: float  # time.monotonic() when the request was added
    first_token_time: float | None = None  # when its first output token was produced
    finished_time: float | None = None  # when its last sample finished
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0  # over all n samples
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None  # None when the request was given token ids
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]  # delta outputs from step(): only samples with news
    finished: bool  # every sample of the request has finished
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(0.0))
