"""The one SDK interface, its stream object, and connect() choosing the implementation.

    client = lodger.sdk.connect(model="path/to/checkpoint")          # in-process engine
    client = lodger.sdk.connect(base_url="http://host:8000/v1")       # any OpenAI-compatible
    answer = await client.generate("def fib(n):", max_tokens=32)
    async for delta in client.chat_stream([{"role": "user", "content": "hi"}]):
        print(delta.text, end="")
"""

from __future__ import annotations

import abc
import collections
from collections.abc import AsyncIterator
from typing import Any

from lodger.sdk.types import Delta, Generation, ModelInfo, Usage

Message = dict[str, Any]  # {"role": "user", "content": "..."}
ChunkStream = AsyncIterator[tuple[list[Delta], Usage | None]]


class GenerationStream:
    """Async iterator of Delta (new text per choice). Once exhausted, `usage` holds the
    request's token counts. Closing it early (aclose(), leaving `async with`, a cancelled
    task) stops the generation: in-process the request is aborted in the engine, remotely
    the connection is closed, which makes the server abort it."""

    def __init__(self, chunks: ChunkStream):
        self._chunks = chunks
        self._pending: collections.deque[Delta] = collections.deque()
        self.usage: Usage | None = None

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> Delta:
        while not self._pending:
            deltas, usage = await anext(self._chunks)  # StopAsyncIteration ends us too
            if usage is not None:
                self.usage = usage
            self._pending.extend(deltas)
        return self._pending.popleft()

    async def aclose(self) -> None:
        await self._chunks.aclose()

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Client(abc.ABC):
    """Text and chat generation, streaming or not, with the sampling options as keywords:
    max_tokens, temperature, top_p, n, stop, seed, presence_penalty, frequency_penalty,
    logprobs (top-k count), and vLLM's top_k, min_p, repetition_penalty, ignore_eos,
    min_tokens, stop_token_ids, include_stop_str_in_output, skip_special_tokens."""

    @abc.abstractmethod
    async def generate(self, prompt: str | list[int], **sampling: Any) -> Generation: ...

    @abc.abstractmethod
    def stream(self, prompt: str | list[int], **sampling: Any) -> GenerationStream: ...

    @abc.abstractmethod
    async def chat(self, messages: list[Message], **sampling: Any) -> Generation: ...

    @abc.abstractmethod
    def chat_stream(self, messages: list[Message], **sampling: Any) -> GenerationStream: ...

    @abc.abstractmethod
    async def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as the model's tokenizer encodes a prompt."""

    @abc.abstractmethod
    async def models(self) -> list[ModelInfo]: ...

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the client (an engine it built is shut down; a shared one is not)."""

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def connect(
    model: str | None = None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    engine=None,
    **options: Any,
) -> Client:
    """An in-process client (no base_url) or a remote one (base_url).

    In-process: `engine=` shares a running AsyncEngine (e.g. with the ASGI app), else one
    is built from `model` (default: the bundled model) and `options` (EngineConfig fields,
    plus served_model_name) and shut down by aclose().
    Remote: `model` is the model name to ask for (default: the server's first model);
    options: timeout, max_retries, max_retry_wait, return_token_ids.
    """
    if base_url is not None:
        if engine is not None:
            raise TypeError("engine= is for the in-process client; leave out base_url")
        from lodger.sdk.remote import RemoteClient

        return RemoteClient(base_url, api_key=api_key, model=model, **options)
    if api_key is not None:
        raise TypeError("api_key is for the remote client (with base_url=...)")
    from lodger.sdk.inprocess import InProcessClient

    return InProcessClient(engine, model=model, **options)
