"""JSON responses from pydantic models, and APIError -> OpenAI-shaped error response."""

from __future__ import annotations

from pydantic import BaseModel
from starlette.responses import Response

from lodger.asgi.errors import APIError


def json_response(body: BaseModel, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(body.model_dump_json(), status_code=status_code, headers=headers,
                    media_type="application/json")


def error_response(error: APIError) -> Response:
    return json_response(error.body(), error.status_code, error.headers)
