"""SyncClient: the SDK for synchronous code (scripts, sync Django views).

It runs an async Client on a private event loop in a daemon thread and blocks the caller
until each answer is there; streams become plain iterators.

    with SyncClient(base_url="http://127.0.0.1:8000/v1") as client:
        print(client.generate("def fib(n):", max_tokens=32).text)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from lodger.sdk.client import Client, GenerationStream, Message, connect
from lodger.sdk.types import Delta, Generation, ModelInfo

T = TypeVar("T")


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


class SyncClient:
    def __init__(self, client: Client | None = None, **connect_kwargs: Any):
        """Wrap `client`, or connect(**connect_kwargs) (then owned: close() closes it)."""
        if client is not None and connect_kwargs:
            raise TypeError("give either a client or connect() arguments, not both")
        self._owns_client = client is None
        self.client = client if client is not None else connect(**connect_kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lodger-sdk-sync",
                                        daemon=True)
        self._thread.start()
        self._closed = False

    def _run(self, awaitable: Awaitable[T]) -> T:
        if self._closed:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never started
            raise RuntimeError("this SyncClient is closed")
        return asyncio.run_coroutine_threadsafe(_await(awaitable), self._loop).result()

    def generate(self, prompt: str | list[int], **sampling: Any) -> Generation:
        return self._run(self.client.generate(prompt, **sampling))

    def stream(self, prompt: str | list[int], **sampling: Any) -> Iterator[Delta]:
        return self._iterate(lambda: self.client.stream(prompt, **sampling))

    def chat(self, messages: list[Message], **sampling: Any) -> Generation:
        return self._run(self.client.chat(messages, **sampling))

    def chat_stream(self, messages: list[Message], **sampling: Any) -> Iterator[Delta]:
        return self._iterate(lambda: self.client.chat_stream(messages, **sampling))

    def tokenize(self, text: str) -> list[int]:
        return self._run(self.client.tokenize(text))

    def models(self) -> list[ModelInfo]:
        return self._run(self.client.models())

    def _iterate(self, open_stream) -> Iterator[Delta]:
        """Deltas one by one; leaving the loop early closes (aborts) the stream."""
        stream: GenerationStream = open_stream()
        try:
            while True:
                try:
                    yield self._run(anext(stream))
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._run(stream.aclose())

    def close(self) -> None:
        if self._closed:
            return
        if self._owns_client:
            self._run(self.client.aclose())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
