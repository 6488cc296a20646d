"""SDK errors: the same classes (and status codes) from the in-process and remote clients."""

from __future__ import annotations


class LodgerError(Exception):
    """Base of every error the SDK raises."""


class APIStatusError(LodgerError):
    """The server (or the in-process app) answered with an OpenAI-shaped error."""

    status_code: int = 0
    retry_after: float | None = None  # seconds a 429/503 asked to wait (remote only)

    def __init__(self, message: str, *, status_code: int | None = None,
                 param: str | None = None, code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.param = param  # the request field at fault, when there is one
        self.code = code
        self.type = type


class BadRequestError(APIStatusError):
    status_code = 400


class AuthenticationError(APIStatusError):
    status_code = 401


class NotFoundError(APIStatusError):
    status_code = 404


class RateLimitError(APIStatusError):
    status_code = 429


class InternalServerError(APIStatusError):
    status_code = 500


class ServiceUnavailableError(APIStatusError):
    """503: the engine is dead, shutting down, or (remote) the server is overloaded."""

    status_code = 503


class APIConnectionError(LodgerError):
    """The remote server could not be reached (after the retries)."""


class APITimeoutError(APIConnectionError):
    """The remote server did not answer in time (after the retries)."""


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    415: BadRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}

# OpenAI error `type` -> status, for errors that arrive inside a stream (no HTTP status)
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "server_error": 500,
    "service_unavailable_error": 503,
}


def error_for(status_code: int, message: str, *, param: str | None = None,
              code: str | None = None, type: str | None = None) -> APIStatusError:
    """The SDK error class for an HTTP status (5xx other than 503 -> InternalServerError)."""
    cls = _BY_STATUS.get(status_code)
    if cls is None:
        cls = InternalServerError if status_code >= 500 else APIStatusError
    return cls(message, status_code=status_code, param=param, code=code, type=type)


def error_from_body(body: dict, status_code: int | None = None) -> APIStatusError:
    """An OpenAI error object ({"message", "type", "param", "code"}) -> SDK error."""
    error_type = body.get("type")
    if status_code is None:
        status_code = _STATUS_BY_TYPE.get(error_type, 500)
    return error_for(status_code, str(body.get("message", "unknown error")),
                     param=body.get("param"), code=body.get("code"), type=error_type)
