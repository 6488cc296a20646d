"""The pieces AsyncEngine's two sides exchange: per-request streams, inbox commands, and
posting items onto a consumer's event loop from the engine thread."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from lodger.engine.outputs import CompletionOutput, RequestOutput
from lodger.engine.sampling_params import SamplingParams


@dataclass(slots=True, eq=False)
class Stream:
    """One request as both sides see it. Built on the caller's loop; once its add command is
    taken by the engine thread, only that thread reads or writes the fields below `queue`."""

    request_id: str
    n: int  # samples the request asked for
    loop: asyncio.AbstractEventLoop  # the consumer's loop: items are posted there
    queue: asyncio.Queue  # RequestOutput deltas, or one exception that ends the request
    arrival_time: float  # time.monotonic() when generate() was called
    last_output_time: float | None = None  # when the previous delta was dispatched
    prompt_token_ids: list[int] = field(default_factory=list)  # from the first delta
    finished_indices: set[int] = field(default_factory=set)  # samples that have ended


@dataclass(slots=True)
class AddCommand:
    stream: Stream  # where the request's outputs go
    prompt: str | list[int]  # text or token ids, as EngineCore.add_request takes them
    params: SamplingParams


@dataclass(slots=True)
class AbortCommand:
    request_id: str  # the user's id (all n samples)
    # resolved once the engine thread has aborted the request (await engine.abort(...))
    done: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None


def post(loop: asyncio.AbstractEventLoop, callback, *args) -> bool:
    """Run callback(*args) on `loop`; False when the loop is closed (nobody will read)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        return False
    return True


def deliver(items: list[tuple[Stream, Any]]) -> None:
    """On the consumer's loop: hand each item to its request's queue."""
    for stream, item in items:
        stream.queue.put_nowait(item)


def set_result(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def abort_output(stream: Stream) -> RequestOutput:
    """The last output of a request aborted while its consumer still listens."""
    outputs = [
        CompletionOutput(index=i, text="", token_ids=[], cumulative_logprob=None, logprobs=None,
                         finish_reason="abort")
        for i in range(stream.n)
        if i not in stream.finished_indices
    ]
    return RequestOutput(stream.request_id, None, stream.prompt_token_ids, outputs, True)
