"""Server-sent events and client disconnects.

A stream is `data: <json>\\n\\n` per chunk and ends with `data: [DONE]\\n\\n`; an error after
the stream has started becomes a `data: {"error": {...}}` chunk, then `[DONE]`. Both the
stream and a plain request watch the connection: when the client goes away the work is
cancelled, which closes the engine generators and so aborts the requests in the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from lodger.asgi.errors import APIError

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # ask proxies (nginx) not to buffer the stream
]


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


def sse_event(chunk: BaseModel) -> bytes:
    return b"data: " + chunk.model_dump_json().encode() + b"\n\n"


def as_api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    logger.error("lodger: unexpected error while serving", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Awaitable[Any]) -> Any:
    """Await `work`, cancelling it (and raising ClientDisconnected) if the client leaves.
    Call only once the request body has been read."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, watch_task):
            task.cancel()
        await asyncio.gather(work_task, watch_task, return_exceptions=True)
    if work_task.cancelled():
        raise ClientDisconnected()
    return work_task.result()


class EventStreamResponse:
    """An ASGI response streaming `first` then the rest of `chunks` as server-sent events.

    `chunks` is always closed when the response ends (finished, failed or disconnected),
    then `on_close` runs (e.g. to release a concurrency slot)."""

    def __init__(
        self,
        first: BaseModel,
        chunks: AsyncIterator[BaseModel],
        on_close: Callable[[], None] | None = None,
    ):
        self.first = first
        self.chunks = chunks
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body_task = asyncio.ensure_future(self._send_all(send))
        watch_task = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({body_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (body_task, watch_task):
                task.cancel()
            await asyncio.gather(body_task, watch_task, return_exceptions=True)
            await self.chunks.aclose()
            if self.on_close is not None:
                self.on_close()
        if not body_task.cancelled() and isinstance(body_task.exception(), OSError):
            return  # the connection broke while sending: nobody to tell
        if not body_task.cancelled() and body_task.exception() is not None:
            raise body_task.exception()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": sse_event(self.first),
                    "more_body": True})
        while True:
            try:
                chunk = await anext(self.chunks)
            except StopAsyncIteration:
                break
            except Exception as exc:  # the generation failed mid-stream: say so, then end
                chunk = as_api_error(exc).body()
                await send({"type": "http.response.body", "body": sse_event(chunk),
                            "more_body": True})
                break
            await send({"type": "http.response.body", "body": sse_event(chunk),
                        "more_body": True})
        await send({"type": "http.response.body", "body": DONE, "more_body": False})
