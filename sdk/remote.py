"""RemoteClient: the SDK over any OpenAI-compatible server (lodger, vLLM, ...), built on
the official `openai.AsyncOpenAI` with tenacity retries.

Retried, with exponential backoff and jitter: connection errors and timeouts, 429 (waiting
what Retry-After says), 502, 503 and 504. Never retried: any other 4xx. A stream is retried
only until its response starts."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from lodger.sdk import convert
from lodger.sdk.client import ChunkStream, Client, GenerationStream, Message
from lodger.sdk.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    error_for,
    error_from_body,
)
from lodger.sdk.sampling import chat_body, completion_body, split_extras
from lodger.sdk.types import Generation, ModelInfo

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 502, 503, 504})


def _retry_after(response) -> float | None:
    """Seconds the server asked to wait (Retry-After: seconds or an HTTP date)."""
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _sdk_error(exc: openai.APIError) -> Exception:
    if isinstance(exc, openai.APITimeoutError):
        return APITimeoutError(str(exc))
    if isinstance(exc, openai.APIConnectionError):
        return APIConnectionError(str(exc))
    body = exc.body if isinstance(exc.body, dict) else {}
    if isinstance(exc, openai.APIStatusError):
        error = error_for(exc.status_code, body.get("message") or exc.message,
                          param=body.get("param"), code=body.get("code"),
                          type=body.get("type"))
        error.retry_after = _retry_after(exc.response)
        return error
    return error_from_body(body or {"message": exc.message})  # an error chunk mid-stream


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, APIConnectionError):
        return True
    return isinstance(exc, APIStatusError) and exc.status_code in RETRY_STATUSES


class RemoteClient(Client):
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        return_token_ids: bool = True,
    ):
        """base_url: the API root, e.g. "http://127.0.0.1:8000/v1". model: the name to ask
        for (default: the server's first model). return_token_ids: ask for token ids (a vLLM
        extra; turn it off for servers that reject unknown fields)."""
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait  # cap on one wait, Retry-After included
        self.return_token_ids = return_token_ids
        self._backoff = wait_random_exponential(multiplier=0.25, max=max_retry_wait)
        self.openai = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0
        )

    # ---- retries --------------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.max_retry_wait)
        return self._backoff(state)

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_is_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    return await request()
                except openai.APIError as exc:
                    raise _sdk_error(exc) from None
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _model(self) -> str:
        if self.model is None:
            self.model = (await self.models())[0].id
        return self.model

    # ---- the interface --------------------------------------------------------------------

    async def generate(self, prompt: str | list[int], **sampling: Any) -> Generation:
        body = completion_body(await self._model(), prompt, sampling, False,
                               self.return_token_ids)
        kwargs, extra = split_extras(body)
        result = await self._call(lambda: self.openai.completions.create(**kwargs,
                                                                         extra_body=extra))
        return convert.completion(result.model_dump())

    def stream(self, prompt: str | list[int], **sampling: Any) -> GenerationStream:
        async def start():
            body = completion_body(await self._model(), prompt, sampling, True,
                                   self.return_token_ids)
            kwargs, extra = split_extras(body)
            return await self.openai.completions.create(**kwargs, extra_body=extra)

        return GenerationStream(self._chunks(start, convert.completion_chunk))

    async def chat(self, messages: list[Message], **sampling: Any) -> Generation:
        body = chat_body(await self._model(), messages, sampling, False, self.return_token_ids)
        kwargs, extra = split_extras(body)
        result = await self._call(lambda: self.openai.chat.completions.create(**kwargs,
                                                                              extra_body=extra))
        return convert.chat_completion(result.model_dump())

    def chat_stream(self, messages: list[Message], **sampling: Any) -> GenerationStream:
        async def start():
            body = chat_body(await self._model(), messages, sampling, True,
                             self.return_token_ids)
            kwargs, extra = split_extras(body)
            return await self.openai.chat.completions.create(**kwargs, extra_body=extra)

        return GenerationStream(self._chunks(start, convert.chat_chunk))

    async def _chunks(self, start, to_deltas) -> ChunkStream:
        stream = await self._call(start)
        try:
            async for chunk in stream:
                yield to_deltas(chunk.model_dump())
        except openai.APIError as exc:
            raise _sdk_error(exc) from None
        finally:
            await stream.close()

    async def tokenize(self, text: str) -> list[int]:
        """vLLM's POST /tokenize, next to the /v1 root."""
        root = self.base_url.removesuffix("/v1")
        body = {"model": await self._model(), "prompt": text}
        result = await self._call(lambda: self.openai.post(f"{root}/tokenize", cast_to=object,
                                                           body=body))
        return list(result["tokens"])

    async def models(self) -> list[ModelInfo]:
        page = await self._call(lambda: self.openai.models.list())
        return [
            ModelInfo(id=m.id, owned_by=m.owned_by,
                      max_model_len=(m.model_extra or {}).get("max_model_len"))
            for m in page.data
        ]

    async def aclose(self) -> None:
        await self.openai.close()
