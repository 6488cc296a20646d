"""What the SDK returns, the same pydantic types whichever client (in-process or remote)."""

from __future__ import annotations

from pydantic import BaseModel


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float


class TokenLogprob(BaseModel):
    token: str  # the generated token's text
    logprob: float  # its logprob under the model's raw distribution
    top_logprobs: list[TopLogprob]  # the most likely tokens at this position, best first


class Choice(BaseModel):
    index: int
    text: str
    token_ids: list[int] | None = None  # None when the server does not report them
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop string or token id that ended it
    logprobs: list[TokenLogprob] | None = None  # one per token, when logprobs were asked


class Generation(BaseModel):
    """A whole answer: one choice per sample (n) and the usage. `text`, `token_ids`,
    `finish_reason` and `logprobs` read the first choice."""

    id: str
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    prompt_token_ids: list[int] | None = None  # None when the server does not report them

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def token_ids(self) -> list[int] | None:
        return self.choices[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        return self.choices[0].logprobs


class Delta(BaseModel):
    """New output of one choice in a stream; the last delta of a choice has finish_reason."""

    index: int
    text: str
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprob] | None = None


class ModelInfo(BaseModel):
    id: str
    owned_by: str | None = None
    max_model_len: int | None = None  # None when the server does not report it
