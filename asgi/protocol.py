"""Request bodies of the OpenAI-compatible API (pydantic), with vLLM's sampling extras.

Pydantic checks types and shapes here; value ranges are checked once, by SamplingParams,
whose errors name the field. Unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(RequestModel):
    include_usage: bool = False  # one last chunk with no choices and the request's usage


class SamplingFields(RequestModel):
    """Fields both generation endpoints share (OpenAI's, then vLLM's extras)."""

    model: str | None = None  # None: the served model
    n: int = 1
    temperature: float | None = None  # None: 1.0
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored
    # vLLM extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # the choices carry the generated token_ids and the response the prompt's (vLLM's name)
    return_token_ids: bool = False


class CompletionRequest(SamplingFields):
    # one prompt (text or token ids) or a batch of them
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None  # top-k logprobs per token, 0..20
    echo: bool = False  # not supported (400 if true)
    suffix: str | None = None  # not supported (400 if given)
    best_of: int | None = None  # only best_of == n is supported
    logit_bias: dict[str, float] | None = None  # not supported (400 if not empty)


class TextContentPart(RequestModel):
    type: Literal["text"]
    text: str


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None  # deprecated by OpenAI in favour of the next
    max_completion_tokens: int | None = None  # None: up to the context length
    logprobs: bool = False
    top_logprobs: int | None = None  # 0..20, needs logprobs=true
    add_generation_prompt: bool = True  # end the prompt with the assistant's header
    tools: list[dict[str, Any]] | None = None  # not supported (400 if not empty)


class TokenizeRequest(RequestModel):
    """Either `prompt` or `messages` (rendered with the chat template)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[int]
