"""API key check (Authorization: Bearer <key>) as a small pure-ASGI middleware."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from lodger.asgi.errors import APIError
from lodger.asgi.responses import error_response

# Routes that need the key when one is set; health, readiness, metrics and version do not.
PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize")


def _route_path(scope: Scope) -> str:
    path, root_path = scope["path"], scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path):] or "/"
    return path


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str):
        assert api_key, "an empty API key would accept anyone"
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _route_path(scope).startswith(PROTECTED_PREFIXES):
            given = Headers(scope=scope).get("authorization")
            if given is None:
                error = APIError(401, "missing API key: send 'Authorization: Bearer <key>'",
                                 code="invalid_api_key")
                await error_response(error)(scope, receive, send)
                return
            if not hmac.compare_digest(given.encode(), self.expected):
                error = APIError(401, "incorrect API key", code="invalid_api_key")
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
