"""AppState: what the routes of one app share (engine, served name, limiter, lifecycle)."""

from __future__ import annotations

import threading
import time

from lodger.asgi.limits import ConcurrencyLimiter
from lodger.asgi.serving import ServingContext, default_model_name
from lodger.engine.async_engine import AsyncEngine
from lodger.engine.config import EngineConfig


class AppState:
    """Holds a given engine, or builds its own from `engine_config` on first use.

    The app's lifespan calls startup()/shutdown(); when the app is mounted somewhere that
    runs no lifespan for it (a Starlette/FastAPI Mount), the first request builds the
    engine instead, and the engine thread (a daemon) ends with the process."""

    def __init__(
        self,
        *,
        engine: AsyncEngine | None,
        engine_config: EngineConfig | None,
        served_model_name: str | None,
        limiter: ConcurrencyLimiter,
        drain_timeout: float,
    ):
        assert (engine is None) != (engine_config is None), "an engine or a config, not both"
        self.owns_engine = engine is None  # built here, so shut down here
        self.engine_config = engine.config if engine is not None else engine_config
        self.model_name = served_model_name or default_model_name(self.engine_config.model)
        self.limiter = limiter
        self.drain_timeout = drain_timeout  # seconds shutdown() lets requests finish
        self.created = int(time.time())
        self._engine = engine
        self._context: ServingContext | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = AsyncEngine(self.engine_config)
        return self._engine

    @property
    def has_engine(self) -> bool:
        return self._engine is not None

    @property
    def context(self) -> ServingContext:
        if self._context is None:
            self._context = ServingContext(self.engine, self.model_name, self.created)
        return self._context

    def startup(self) -> None:
        """Start the engine thread (the model loads in the background; /ready says when)."""
        _ = self.engine

    async def shutdown(self) -> None:
        """Shut the engine down if this app built it; a shared engine is left running."""
        if self.owns_engine and self._engine is not None:
            await self._engine.shutdown(self.drain_timeout)
