"""What every endpoint shares: the served model, engine readiness, running a request's
prompts through the engine, and mapping engine errors to API errors.

Nothing here knows HTTP: the routes and the in-process SDK client both call the serving
functions, so they validate and answer alike.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field

from lodger.asgi.errors import APIError, from_engine_error, from_value_error
from lodger.asgi.protocol_responses import UsageInfo
from lodger.asgi.sampling import KNOWN_FIELDS
from lodger.engine.async_engine import AsyncEngine
from lodger.engine.errors import EngineDeadError, EngineNotRunningError, EngineShutdownError
from lodger.engine.outputs import CompletionOutput, RequestOutput, SampleLogprobs
from lodger.engine.sampling_params import SamplingParams

Prompt = str | list[int]


@dataclass(slots=True)
class ServingContext:
    engine: AsyncEngine
    model_name: str  # the name clients send as `model` (and /v1/models lists)
    created: int  # unix time the app was built, /v1/models' `created`

    @property
    def model_root(self) -> str:
        return self.engine.config.model

    def check_model(self, name: str | None) -> None:
        """404 unless `name` is the served model (or left out)."""
        if name is not None and name != self.model_name:
            raise APIError(
                404,
                f"The model {name!r} does not exist; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    async def ready_engine(self) -> AsyncEngine:
        """The engine once its model is loaded; 503 when it is dead or shutting down."""
        engine = self.engine
        if not engine.is_running:
            raise from_engine_error(_not_running(engine))
        try:
            await engine.wait_until_ready()
        except EngineNotRunningError as exc:
            raise from_engine_error(exc) from None
        return engine


def default_model_name(model_dir: str) -> str:
    return os.path.basename(os.path.normpath(model_dir))


def _not_running(engine: AsyncEngine) -> EngineNotRunningError:
    if engine.is_dead:
        return EngineDeadError(f"the engine is dead: {engine.dead_error!r}")
    return EngineShutdownError("the engine is shutting down and takes no requests")


@contextmanager
def engine_errors(renames: dict[str, str] | None = None):
    """ValueErrors of the engine's checks -> 400 naming the field; dead engine -> 503."""
    try:
        yield
    except EngineNotRunningError as exc:
        raise from_engine_error(exc) from None
    except ValueError as exc:
        raise from_value_error(exc, KNOWN_FIELDS, renames) from None


async def run_prompts(
    engine: AsyncEngine, prompts: list[Prompt], params: SamplingParams, request_id: str
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, delta) for every prompt, as the engine produces them.

    With several prompts nothing is yielded until each has produced its first output, so
    a prompt the engine refuses fails the whole request before anything was sent. Closing
    this iterator aborts every prompt still running.
    """
    if len(prompts) == 1:
        async with aclosing(engine.generate(prompts[0], params, request_id)) as outputs:
            async for out in outputs:
                yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()
    tasks = [
        asyncio.create_task(_pump(i, engine.generate(p, params, f"{request_id}-{i}"), queue))
        for i, p in enumerate(prompts)
    ]
    try:
        pending: list[tuple[int, RequestOutput]] | None = []  # until every prompt has started
        started: set[int] = set()
        num_running = len(prompts)
        while num_running:
            i, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                num_running -= 1
                continue
            if pending is None:
                yield i, item
                continue
            started.add(i)
            pending.append((i, item))
            if len(started) == len(prompts):
                for ready in pending:
                    yield ready
                pending = None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(index: int, outputs, queue: asyncio.Queue) -> None:
    try:
        async with aclosing(outputs):
            async for out in outputs:
                queue.put_nowait((index, out))
    except Exception as exc:
        queue.put_nowait((index, exc))
    else:
        queue.put_nowait((index, None))


@dataclass(slots=True)
class ChoiceState:
    """One choice (prompt i, sample j) accumulated over its deltas."""

    index: int  # the choice's index in the response: prompt_index * n + sample index
    text: list[str] = field(default_factory=list)  # the text deltas, in order
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[SampleLogprobs] = field(default_factory=list)  # one per token, when asked
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def add(self, delta: CompletionOutput) -> None:
        self.text.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs is not None:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason


@dataclass(slots=True)
class Usage:
    """Token counts of one HTTP request: each prompt once (whatever n), all outputs."""

    prompt_tokens: dict[int, int] = field(default_factory=dict)  # prompt index -> tokens
    completion_tokens: int = 0

    def add(self, prompt_index: int, out: RequestOutput) -> None:
        self.prompt_tokens[prompt_index] = len(out.prompt_token_ids)
        self.completion_tokens += sum(len(c.token_ids) for c in out.outputs)

    def info(self) -> UsageInfo:
        prompt_tokens = sum(self.prompt_tokens.values())
        return UsageInfo(
            prompt_tokens=prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=prompt_tokens + self.completion_tokens,
        )
