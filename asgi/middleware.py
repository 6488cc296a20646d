"""LodgerMiddleware: serve the lodger app under a path prefix of a host ASGI app.

    application = LodgerMiddleware(host_app, engine=engine, path_prefix="/llm")

Requests under the prefix go to the lodger app (the prefix moves into `root_path`, as a
Starlette Mount does); everything else goes to the host. Lifespan is chained: lodger starts
before the host and shuts down after it. A host without lifespan support (Django's
ASGIHandler raises on it) still gets lodger's own startup and shutdown.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lodger.asgi.app import create_app
from lodger.asgi.state import AppState


class LodgerMiddleware:
    def __init__(self, app: ASGIApp, *, path_prefix: str = "/llm", **create_app_kwargs: Any):
        """`create_app_kwargs` are create_app()'s (engine=..., or model=... and options)."""
        if not path_prefix.startswith("/") or path_prefix.endswith("/"):
            raise ValueError(f"path_prefix must start and not end with '/', got {path_prefix!r}")
        self.app = app
        self.path_prefix = path_prefix
        self.lodger_app = create_app(**create_app_kwargs)
        self.state: AppState = self.lodger_app.state.lodger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] in ("http", "websocket"):
            root_path = scope.get("root_path", "")
            path = scope["path"]
            route_path = path[len(root_path):] if root_path and path.startswith(root_path) else path
            if route_path == self.path_prefix or route_path.startswith(self.path_prefix + "/"):
                child = dict(scope, root_path=root_path + self.path_prefix)
                await self.lodger_app(child, receive, send)
                return
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        host_started = False  # the host asked for its startup message

        async def host_receive() -> Message:
            nonlocal host_started
            message = await receive()
            if message["type"] == "lifespan.startup":
                host_started = True
                self.state.startup()
            return message

        async def host_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.state.shutdown()
            await send(message)

        try:
            await self.app(scope, host_receive, host_send)
        except Exception:
            if host_started:
                raise
        if not host_started:  # the host has no lifespan: run lodger's alone
            await self._own_lifespan(receive, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.state.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.state.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
