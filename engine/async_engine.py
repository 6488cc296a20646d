"""AsyncEngine: the EngineCore on its own thread, driven from any asyncio event loop.

One thread ("lodger-engine") builds the EngineCore, so it owns the model and the KV cache,
and runs the step() loop; with no work it sleeps on a condition variable. Event loops hand
it commands (add, abort) through an inbox guarded by a lock, and get each request's delta
outputs on a per-request asyncio.Queue, posted with loop.call_soon_threadsafe (one call per
loop per step). The event loop never waits on the model; the engine thread never waits on an
event loop. Several loops (threads) may use one engine at once; no signal handlers are used.

    engine = AsyncEngine(model="path/to/checkpoint", max_model_len=2048)
    async for out in engine.generate("Hello", SamplingParams(max_tokens=8)):
        print(out.outputs[0].text, end="")
    await engine.shutdown()
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from lodger.engine.async_streams import (
    AbortCommand,
    AddCommand,
    Stream,
    abort_output,
    deliver,
    post,
    set_result,
)
from lodger.engine.config import EngineConfig
from lodger.engine.errors import EngineDeadError, EngineShutdownError
from lodger.engine.outputs import RequestOutput
from lodger.engine.request_timing import RequestTiming, TimingSnapshot
from lodger.engine.sampling_params import SamplingParams
from lodger.engine.stats import EngineStats

logger = logging.getLogger(__name__)


class AsyncEngine:
    """See the module docstring. `AsyncEngine(EngineConfig(...))` or `AsyncEngine(model=...,
    **engine_options)`; the thread starts at once and loads the model in the background."""

    def __init__(self, config: EngineConfig | str | None = None, /, **engine_options: Any):
        if isinstance(config, EngineConfig):
            if engine_options:
                raise TypeError("pass either an EngineConfig or keyword options, not both")
            self.config = config
        else:
            model = engine_options.pop("model", config)
            if model is None:
                from lodger import default_model_path

                model = default_model_path()
            self.config = EngineConfig.from_kwargs(model, **engine_options)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the engine thread sleeps on it
        self._idle = threading.Condition(self._lock)  # close() waits on it for the drain
        self._inbox: list[AddCommand | AbortCommand] = []  # commands not yet taken by the thread
        self._num_live = 0  # requests submitted and not yet ended (under _lock)
        self._accepting = True
        self._stop_requested = False
        self._exited = False  # the engine thread has stopped taking commands (under _lock)
        self._dead_error: BaseException | None = None  # why the thread died, if it did
        self._started = threading.Event()  # set once the core is built, or the start failed
        # futures of wait_until_ready() callers, resolved when _started is set (under _lock)
        self._ready_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._streams: dict[str, Stream] = {}  # engine thread only
        self._core = None
        self._stats = EngineStats()  # latest snapshot, published by the engine thread
        self._timing = RequestTiming()
        self._thread = threading.Thread(target=self._thread_main, name="lodger-engine",
                                        daemon=True)
        self._thread.start()

    # ---- state ----------------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        """The model is loaded and the engine takes requests."""
        return self._core is not None and self._dead_error is None and self._accepting

    @property
    def is_dead(self) -> bool:
        return self._dead_error is not None

    @property
    def is_running(self) -> bool:
        """Not dead and not shut down (it may still be loading the model)."""
        return self._dead_error is None and self._accepting

    @property
    def dead_error(self) -> BaseException | None:
        """The exception that killed the engine thread, or None."""
        return self._dead_error

    def check_health(self) -> None:
        """Raise EngineDeadError if the engine thread died."""
        if self._dead_error is not None:
            raise EngineDeadError(f"the engine is dead: {self._dead_error!r}")

    async def wait_until_ready(self, timeout: float | None = None) -> None:
        """Wait (without blocking the loop) until the model is loaded; raises EngineDeadError
        if loading failed and TimeoutError after `timeout` seconds."""
        if not self._started.is_set():
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            with self._lock:
                if not self._started.is_set():
                    self._ready_waiters.append((loop, future))
                else:
                    future.set_result(None)
            async with asyncio.timeout(timeout):
                await future
        self.check_health()

    def wait_until_ready_sync(self, timeout: float | None = None) -> None:
        """Blocking wait_until_ready() for synchronous code (scripts, the CLI)."""
        if not self._started.wait(timeout):
            raise TimeoutError(f"the engine was not ready after {timeout} s")
        self.check_health()

    @property
    def tokenizer(self):
        """The engine's tokenizer (encode/decode/apply_chat_template); needs a loaded model."""
        return self._require_core().tokenizer

    @property
    def max_model_len(self) -> int:
        return self._require_core().max_model_len

    def _require_core(self):
        core = self._core
        if core is None:
            self.check_health()
            raise RuntimeError("the engine is still loading its model (or was shut down)")
        return core

    def stats(self) -> EngineStats:
        """Counts as of the engine thread's last step or wake-up: running/waiting, KV blocks
        and usage, prefix-cache hits, preemptions, prompt/generation token counters."""
        return self._stats

    def timing(self) -> TimingSnapshot:
        """Latency histograms (TTFT, inter-token, end-to-end), aborts and step CPU time."""
        return self._timing.snapshot()

    # ---- requests -------------------------------------------------------------------------

    async def generate(
        self,
        prompt: str | list[int],
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's delta outputs until it finishes (the last has finished=True).

        Errors from validation (ValueError, e.g. a prompt over max_model_len) and
        EngineDeadError come out of the first (or a later) iteration. Leaving the loop early,
        cancelling the task or closing the generator aborts the request in the engine.
        """
        params = sampling_params if sampling_params is not None else SamplingParams()
        stream = Stream(
            request_id=request_id if request_id is not None else f"req-{uuid.uuid4().hex}",
            n=params.n,
            loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
            arrival_time=time.monotonic(),
        )
        self._submit_add(AddCommand(stream, prompt, params))
        ended = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                ended = item.finished
                yield item
                if ended:
                    return
        finally:
            if not ended:
                self._submit(AbortCommand(stream.request_id, None))

    async def abort(self, request_id: str) -> None:
        """Abort a request in any state and wait until the engine has freed its blocks. Its
        consumer gets a last output with finish_reason "abort". Unknown ids are ignored."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._submit(AbortCommand(request_id, (loop, future))):
            await future

    def _submit_add(self, command: AddCommand) -> None:
        with self._lock:
            if self._dead_error is not None:
                raise EngineDeadError(f"the engine is dead: {self._dead_error!r}")
            if not self._accepting:
                raise EngineShutdownError("the engine is shutting down and takes no requests")
            self._inbox.append(command)
            self._num_live += 1
            self._work.notify()

    def _submit(self, command: AbortCommand) -> bool:
        """Queue an abort; False when no thread is left to run it."""
        with self._lock:
            if self._dead_error is not None or self._exited:
                return False
            self._inbox.append(command)
            self._work.notify()
            return True

    # ---- shutdown -------------------------------------------------------------------------

    async def shutdown(self, drain_timeout: float | None = 30.0) -> None:
        """Stop accepting requests, let running ones finish for up to `drain_timeout`
        seconds, abort the rest, stop the thread and free the model and KV cache."""
        await asyncio.to_thread(self.close, drain_timeout)

    def close(self, drain_timeout: float | None = 30.0) -> None:
        """Blocking form of shutdown() for synchronous code (scripts, atexit)."""
        deadline = None if drain_timeout is None else time.monotonic() + drain_timeout
        with self._lock:
            self._accepting = False
            while self._num_live > 0 and self._dead_error is None and self._thread.is_alive():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._idle.wait(remaining)
            self._stop_requested = True
            self._work.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # ---- the engine thread ----------------------------------------------------------------

    def _thread_main(self) -> None:
        from lodger.engine.engine_core import EngineCore

        try:
            core = EngineCore(self.config)
        except BaseException as exc:
            logger.exception("lodger: the engine failed to load %s", self.config.model)
            self._fail(exc)
            return
        self._core = core
        self._stats = core.stats()
        self._set_started()
        try:
            self._run(core)
        except BaseException as exc:
            logger.exception("lodger: the engine thread died")
            self._fail(exc)
        finally:
            self._close_inbox()
            self._release()

    def _close_inbox(self) -> None:
        """Answer the commands that came in after the last take; take no more."""
        with self._lock:
            self._exited = True
            commands, self._inbox = self._inbox, []
        for command in commands:
            if isinstance(command, AbortCommand) and command.done is not None:
                post(command.done[0], set_result, command.done[1])
            elif isinstance(command, AddCommand):  # (submits are refused once stopping began)
                self._end(command.stream, EngineShutdownError("the engine was shut down"))

    def _run(self, core) -> None:
        while True:
            commands, stop = self._take_commands(core)
            for command in commands:
                if isinstance(command, AddCommand):
                    self._add(core, command)
                else:
                    self._abort(core, command)
            if stop:
                for request_id in list(self._streams):
                    self._abort(core, AbortCommand(request_id, None))
                self._stats = core.stats()
                return
            if core.has_unfinished_requests():
                cpu_start = time.thread_time()
                outputs = core.step()
                self._timing.on_step(time.thread_time() - cpu_start)
                self._dispatch(core, outputs)
            self._stats = core.stats()

    def _take_commands(self, core) -> tuple[list[AddCommand | AbortCommand], bool]:
        """The inbox, once there is something to do; sleeps while there is nothing."""
        with self._lock:
            while not (self._inbox or self._stop_requested or core.has_unfinished_requests()):
                self._stats = core.stats()
                self._work.wait()
            commands, self._inbox = self._inbox, []
            return commands, self._stop_requested

    def _add(self, core, command: AddCommand) -> None:
        stream = command.stream
        try:
            core.add_request(stream.request_id, command.prompt, command.params,
                             arrival_time=stream.arrival_time)
        except Exception as exc:  # validation: this request only, the engine goes on
            self._end(stream, exc)
            return
        self._streams[stream.request_id] = stream

    def _abort(self, core, command: AbortCommand) -> None:
        core.abort_request(command.request_id)
        stream = self._streams.pop(command.request_id, None)
        if stream is not None:
            self._timing.on_abort()
            self._end(stream, abort_output(stream))
        if command.done is not None:
            post(command.done[0], set_result, command.done[1])

    def _dispatch(self, core, outputs: list[RequestOutput]) -> None:
        now = time.monotonic()
        batches: dict[asyncio.AbstractEventLoop, list[tuple[Stream, Any]]] = {}
        num_ended = 0
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue  # aborted by its consumer while the step ran
            self._timing.on_output(stream.arrival_time, stream.last_output_time, now,
                                   out.finished)
            stream.last_output_time = now
            stream.prompt_token_ids = out.prompt_token_ids
            stream.finished_indices.update(c.index for c in out.outputs if c.finished)
            if out.finished:
                del self._streams[out.request_id]
                num_ended += 1
            batches.setdefault(stream.loop, []).append((stream, out))
        for loop, items in batches.items():
            if not post(loop, deliver, items):  # the consumer's loop is gone
                for stream, _ in items:
                    if self._streams.pop(stream.request_id, None) is not None:
                        core.abort_request(stream.request_id)
                        self._timing.on_abort()
                        num_ended += 1
        if num_ended:
            self._count_ended(num_ended)

    def _end(self, stream: Stream, item: RequestOutput | BaseException) -> None:
        """Post a request's last item and count it as ended."""
        post(stream.loop, deliver, [(stream, item)])
        self._count_ended(1)

    def _count_ended(self, num_ended: int) -> None:
        with self._lock:
            self._num_live -= num_ended
            assert self._num_live >= 0, "more requests ended than were submitted"
            if self._num_live == 0:
                self._idle.notify_all()

    def _fail(self, exc: BaseException) -> None:
        """The thread is dying: every waiting request and future hears of it at once."""
        with self._lock:
            self._dead_error = exc
            self._accepting = False
            commands, self._inbox = self._inbox, []
            self._num_live = 0
            self._idle.notify_all()
        streams = list(self._streams.values())
        self._streams.clear()
        streams += [c.stream for c in commands if isinstance(c, AddCommand)]
        for stream in streams:
            error = EngineDeadError(f"the engine died while serving this request: {exc!r}")
            error.__cause__ = exc
            post(stream.loop, deliver, [(stream, error)])
        for command in commands:
            if isinstance(command, AbortCommand) and command.done is not None:
                post(command.done[0], set_result, command.done[1])
        self._set_started()

    def _set_started(self) -> None:
        with self._lock:
            self._started.set()
            waiters, self._ready_waiters = self._ready_waiters, []
        for loop, future in waiters:
            post(loop, set_result, future)

    def _release(self) -> None:
        """Drop the core (model weights and KV cache) and give the memory back."""
        self._core = None
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

