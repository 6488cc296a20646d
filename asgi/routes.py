"""The HTTP endpoints: read and validate JSON, admit, call the serving functions, answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import lodger
from lodger.asgi import serving_chat, serving_completions, serving_tokens
from lodger.asgi.errors import APIError, from_engine_error, from_validation_error
from lodger.asgi.metrics import CONTENT_TYPE, render_metrics
from lodger.asgi.openapi import Operation, openapi_schema
from lodger.asgi.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from lodger.asgi.protocol_responses import (
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CompletionResponse,
    CompletionStreamResponse,
    DetokenizeResponse,
    HealthResponse,
    ModelList,
    TokenizeResponse,
    VersionResponse,
)
from lodger.asgi.responses import json_response
from lodger.asgi.serving import ServingContext
from lodger.asgi.state import AppState
from lodger.asgi.streaming import ClientDisconnected, EventStreamResponse, until_disconnect
from lodger.engine.errors import EngineDeadError, EngineShutdownError

JSON_MEDIA_TYPES = ("application/json",)


async def read_json(request: Request, model: type[BaseModel]) -> Any:
    """The body as `model`: 415 unless it is JSON, 400 naming the field when it is invalid."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    is_json = media_type in JSON_MEDIA_TYPES or media_type.endswith("+json")
    if media_type and not is_json:
        raise APIError(415, f"the body must be JSON (Content-Type: application/json), "
                            f"got Content-Type {content_type!r}", code="unsupported_media_type")
    body = await request.body()
    try:
        data = json.loads(body)
    except ValueError as exc:
        if not media_type:
            raise APIError(415, "the body must be JSON (Content-Type: application/json)",
                           code="unsupported_media_type") from None
        raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


Create = Callable[[ServingContext, Any], Awaitable[BaseModel]]
Stream = Callable[[ServingContext, Any], AsyncIterator[BaseModel]]


class Endpoints:
    def __init__(self, state: AppState):
        self.state = state

    async def _generate(self, request: Request, model: type[BaseModel], create: Create,
                        stream: Stream) -> Response:
        body = await read_json(request, model)
        limiter = self.state.limiter
        limiter.acquire()
        handed_over = False  # the stream response releases the slot when it ends
        try:
            ctx = self.state.context
            if not body.stream:
                result = await until_disconnect(request.receive, create(ctx, body))
                return json_response(result)
            chunks = stream(ctx, body)
            try:  # the first chunk comes once the engine took the request: errors before it
                first = await until_disconnect(request.receive, anext(chunks))
            except BaseException:
                await chunks.aclose()
                raise
            handed_over = True
            return EventStreamResponse(first, chunks, on_close=limiter.release)
        except ClientDisconnected:
            return Response(status_code=499)  # nobody reads it; the request was aborted
        except StopAsyncIteration:
            raise APIError(500, "the stream ended before its first chunk") from None
        finally:
            if not handed_over:
                limiter.release()

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, CompletionRequest,
                                    serving_completions.create_completion,
                                    serving_completions.stream_completion)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, ChatCompletionRequest,
                                    serving_chat.create_chat_completion,
                                    serving_chat.stream_chat_completion)

    async def models(self, request: Request) -> Response:
        return json_response(serving_tokens.list_models(self.state.context))

    async def tokenize(self, request: Request) -> Response:
        body = await read_json(request, TokenizeRequest)
        return json_response(await serving_tokens.tokenize(self.state.context, body))

    async def detokenize(self, request: Request) -> Response:
        body = await read_json(request, DetokenizeRequest)
        return json_response(await serving_tokens.detokenize(self.state.context, body))

    async def health(self, request: Request) -> Response:
        """Liveness: 200 while the engine lives (loading included), 503 once it died or
        was shut down."""
        engine = self.state.engine
        if engine.is_dead:
            raise from_engine_error(EngineDeadError(f"the engine is dead: {engine.dead_error!r}"))
        if not engine.is_running:
            raise from_engine_error(EngineShutdownError("the engine was shut down"))
        return json_response(HealthResponse(status="ok" if engine.is_ready else "loading"))

    async def ready(self, request: Request) -> Response:
        """Readiness: 200 once the model is loaded and requests are taken, else 503."""
        engine = self.state.engine
        if engine.is_ready:
            return json_response(HealthResponse(status="ok"))
        await self.health(request)  # dead or shut down: its 503 says which
        raise APIError(503, "the model is still loading", code="loading")

    async def metrics(self, request: Request) -> Response:
        text = render_metrics(self.state.engine, self.state.model_name,
                              self.state.limiter.num_in_flight)
        return Response(text, media_type=CONTENT_TYPE)

    async def version(self, request: Request) -> Response:
        return json_response(VersionResponse(version=lodger.__version__))

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_schema(OPERATIONS, "lodger", lodger.__version__))

    def routes(self) -> list[Route]:
        return [
            Route(op.path, getattr(self, name), methods=[op.method.upper()])
            for name, op in zip(OPERATION_ENDPOINTS, OPERATIONS, strict=True)
        ]


OPERATIONS = [
    Operation("post", "/v1/completions", "Text completion (stream: SSE)",
              CompletionRequest, CompletionResponse, CompletionStreamResponse, protected=True),
    Operation("post", "/v1/chat/completions", "Chat completion (stream: SSE)",
              ChatCompletionRequest, ChatCompletionResponse, ChatCompletionStreamResponse,
              protected=True),
    Operation("get", "/v1/models", "The served model", response_model=ModelList,
              protected=True),
    Operation("post", "/tokenize", "Text or chat messages to token ids", TokenizeRequest,
              TokenizeResponse, protected=True),
    Operation("post", "/detokenize", "Token ids to text", DetokenizeRequest,
              DetokenizeResponse, protected=True),
    Operation("get", "/health", "Liveness (503 once the engine is dead)",
              response_model=HealthResponse),
    Operation("get", "/ready", "Readiness (503 until the model is loaded)",
              response_model=HealthResponse),
    Operation("get", "/metrics", "Prometheus metrics", media_type=CONTENT_TYPE),
    Operation("get", "/version", "lodger's version", response_model=VersionResponse),
    Operation("get", "/openapi.json", "This document"),
]
OPERATION_ENDPOINTS = ["completions", "chat_completions", "models", "tokenize", "detokenize",
                       "health", "ready", "metrics", "version", "openapi"]
