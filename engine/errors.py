"""Errors the AsyncEngine raises to its callers (the serving layer maps them to HTTP 503)."""

from __future__ import annotations


class EngineNotRunningError(RuntimeError):
    """The engine cannot take requests: it died, or it is shutting down or shut down."""


class EngineDeadError(EngineNotRunningError):
    """The engine thread died (an exception in a step) or failed to start.

    Every request that was waiting gets this error, new requests are refused with it, and
    the engine stays dead: build a new one (restart the process) to serve again.
    """


class EngineShutdownError(EngineNotRunningError):
    """The engine is shutting down or was shut down: it accepts no new requests."""
