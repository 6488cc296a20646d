"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

`APIError` is raised anywhere in the serving code and turned into a JSON response (or, in
a stream that has started, into an error chunk followed by `data: [DONE]`).
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from lodger.asgi.protocol_responses import ErrorInfo, ErrorResponse
from lodger.engine.errors import EngineDeadError, EngineNotRunningError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}

# A ValueError from SamplingParams or the engine starts with the field it is about.
_LEADING_FIELD = re.compile(r"^([a-z_][a-z0-9_]*)\b")


class APIError(Exception):
    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        assert status_code in ERROR_TYPES, f"no error type for HTTP {status_code}"
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorInfo(
                message=self.message,
                type=ERROR_TYPES[self.status_code],
                param=self.param,
                code=self.code,
            )
        )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_validation_error(exc: ValidationError) -> APIError:
    """The first problem pydantic found, naming the field (dotted path for nested ones)."""
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    # unions add the tried type names to the location (e.g. prompt.str): keep the field path
    path = ".".join(part for part in loc if not _is_type_name(part)) or None
    message = f"{path}: {first['msg']}" if path else first["msg"]
    return bad_request(message, param=path, code="invalid_value")


def _is_type_name(part: str) -> bool:
    return part in {"str", "int", "float", "bool"} or "[" in part or part.startswith("function")


def from_value_error(
    exc: ValueError, known_fields: set[str], renames: dict[str, str] | None = None
) -> APIError:
    """A ValueError naming a field (SamplingParams, the engine's prompt checks) -> 400."""
    message = str(exc)
    match = _LEADING_FIELD.match(message)
    param = match.group(1) if match and match.group(1) in known_fields else None
    if param is not None and renames and param in renames:
        param = renames[param]
        message = renames[match.group(1)] + message[match.end():]
    code = "context_length_exceeded" if "max_model_len" in message else "invalid_value"
    return bad_request(message, param=param, code=code)


def from_engine_error(exc: EngineNotRunningError) -> APIError:
    code = "engine_dead" if isinstance(exc, EngineDeadError) else "shutting_down"
    return APIError(503, str(exc), code=code)
