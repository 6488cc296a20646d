"""create_app(): the OpenAI-compatible Starlette sub-app, ready to mount or to serve alone."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from lodger.asgi.auth import APIKeyMiddleware
from lodger.asgi.errors import ERROR_TYPES, APIError
from lodger.asgi.limits import ConcurrencyLimiter
from lodger.asgi.responses import error_response
from lodger.asgi.routes import Endpoints
from lodger.asgi.state import AppState
from lodger.engine.async_engine import AsyncEngine
from lodger.engine.config import EngineConfig

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT_REQUESTS = 256


def create_app(
    engine: AsyncEngine | None = None,
    *,
    model: str | None = None,
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_concurrent_requests: int | None = DEFAULT_MAX_CONCURRENT_REQUESTS,
    drain_timeout: float = 30.0,
    **engine_config: Any,
) -> Starlette:
    """The lodger API as a Starlette app.

    engine: serve this engine (shared with the host; the app never shuts it down). Without
        one, the app builds an AsyncEngine from `model` (default: the bundled model) and
        `engine_config` (EngineConfig's fields) in its lifespan, or on its first request
        when mounted where no lifespan runs, and shuts it down when its lifespan ends.
    api_key: when set, /v1/*, /tokenize and /detokenize need `Authorization: Bearer <key>`.
    served_model_name: the `model` clients send and /v1/models lists (default: the
        checkpoint directory's name).
    max_concurrent_requests: generation requests in flight before 429 (None: no cap).
    drain_timeout: seconds a shutdown lets running requests finish before aborting them.
    """
    if engine is not None:
        if model is not None or engine_config:
            raise TypeError("give either an engine or a model and engine options, not both")
        config = None
    else:
        if model is None:
            from lodger import default_model_path

            model = default_model_path()
        config = EngineConfig.from_kwargs(model, **engine_config)  # bad options fail here
    state = AppState(
        engine=engine,
        engine_config=config,
        served_model_name=served_model_name,
        limiter=ConcurrencyLimiter(max_concurrent_requests),
        drain_timeout=drain_timeout,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette):
        state.startup()
        try:
            yield
        finally:
            await state.shutdown()

    middleware = [Middleware(APIKeyMiddleware, api_key=api_key)] if api_key else []
    app = Starlette(
        routes=Endpoints(state).routes(),
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            APIError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    app.state.lodger = state
    return app


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code if exc.status_code in ERROR_TYPES else 400
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(APIError(status, message, headers=dict(exc.headers or {})))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.error("lodger: unexpected error in %s %s", request.method, request.url.path,
                 exc_info=exc)
    return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                                   code="internal_error"))
