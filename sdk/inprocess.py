"""InProcessClient: the SDK over an AsyncEngine in this process, through the same serving
functions (validation, chat template, errors) as the HTTP app, without HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from lodger.asgi import serving_chat, serving_completions, serving_tokens
from lodger.asgi.errors import APIError, from_validation_error
from lodger.asgi.protocol import ChatCompletionRequest, CompletionRequest, TokenizeRequest
from lodger.asgi.serving import ServingContext, default_model_name
from lodger.engine.async_engine import AsyncEngine
from lodger.sdk import convert
from lodger.sdk.client import ChunkStream, Client, GenerationStream, Message
from lodger.sdk.errors import error_for
from lodger.sdk.sampling import chat_body, completion_body
from lodger.sdk.types import Generation, ModelInfo

T = TypeVar("T")


def _sdk_error(error: APIError):
    return error_for(error.status_code, error.message, param=error.param, code=error.code)


def _validated(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _sdk_error(from_validation_error(exc)) from None


async def _answer(work: Awaitable[T]) -> T:
    try:
        return await work
    except APIError as error:
        raise _sdk_error(error) from None


class InProcessClient(Client):
    def __init__(
        self,
        engine: AsyncEngine | None = None,
        *,
        model: str | None = None,
        served_model_name: str | None = None,
        **engine_options: Any,
    ):
        """Share `engine`, or build one from `model` and `engine_options` (then owned: it is
        shut down by aclose())."""
        if engine is not None and (model is not None or engine_options):
            raise TypeError("give either an engine or a model and engine options, not both")
        self.owns_engine = engine is None
        self.engine = engine if engine is not None else AsyncEngine(model, **engine_options)
        name = served_model_name or default_model_name(self.engine.config.model)
        self._ctx = ServingContext(self.engine, name, int(time.time()))

    @property
    def model(self) -> str:
        return self._ctx.model_name

    async def generate(self, prompt: str | list[int], **sampling: Any) -> Generation:
        body = completion_body(self.model, prompt, sampling, stream=False, return_token_ids=True)
        request = _validated(CompletionRequest, body)
        response = await _answer(serving_completions.create_completion(self._ctx, request))
        return convert.completion(response.model_dump())

    def stream(self, prompt: str | list[int], **sampling: Any) -> GenerationStream:
        body = completion_body(self.model, prompt, sampling, stream=True, return_token_ids=True)
        request = _validated(CompletionRequest, body)
        chunks = serving_completions.stream_completion(self._ctx, request)
        return GenerationStream(_converted(chunks, convert.completion_chunk))

    async def chat(self, messages: list[Message], **sampling: Any) -> Generation:
        body = chat_body(self.model, messages, sampling, stream=False, return_token_ids=True)
        request = _validated(ChatCompletionRequest, body)
        response = await _answer(serving_chat.create_chat_completion(self._ctx, request))
        return convert.chat_completion(response.model_dump())

    def chat_stream(self, messages: list[Message], **sampling: Any) -> GenerationStream:
        body = chat_body(self.model, messages, sampling, stream=True, return_token_ids=True)
        request = _validated(ChatCompletionRequest, body)
        chunks = serving_chat.stream_chat_completion(self._ctx, request)
        return GenerationStream(_converted(chunks, convert.chat_chunk))

    async def tokenize(self, text: str) -> list[int]:
        request = TokenizeRequest(model=self.model, prompt=text)
        response = await _answer(serving_tokens.tokenize(self._ctx, request))
        return response.tokens

    async def models(self) -> list[ModelInfo]:
        listing = serving_tokens.list_models(self._ctx)
        return [
            ModelInfo(id=card.id, owned_by=card.owned_by, max_model_len=card.max_model_len)
            for card in listing.data
        ]

    async def aclose(self) -> None:
        if self.owns_engine:
            await self.engine.shutdown()


async def _converted(chunks: AsyncIterator[BaseModel], to_deltas) -> ChunkStream:
    """The app's stream chunks as SDK deltas; closing this closes (aborts) the generation."""
    try:
        async for chunk in chunks:
            yield to_deltas(chunk.model_dump())
    except APIError as error:
        raise _sdk_error(error) from None
    finally:
        await chunks.aclose()
