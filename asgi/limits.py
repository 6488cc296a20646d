"""A cap on generation requests in flight: past it, 429 with Retry-After."""

from __future__ import annotations

import threading

from lodger.asgi.errors import APIError


class ConcurrencyLimiter:
    """Counts generation requests from admission to their last byte (a stream included).

    Thread-safe: a host may serve the app from several event loops."""

    def __init__(self, max_concurrent_requests: int | None, retry_after_s: int = 1):
        if max_concurrent_requests is not None and max_concurrent_requests < 1:
            raise ValueError(
                f"max_concurrent_requests must be >= 1 or None, got {max_concurrent_requests}"
            )
        self.max_concurrent_requests = max_concurrent_requests
        self.retry_after_s = retry_after_s  # what 429 answers tell clients to wait
        self._lock = threading.Lock()
        self.num_in_flight = 0

    def acquire(self) -> None:
        """Admit one request or raise a 429 APIError."""
        with self._lock:
            limit = self.max_concurrent_requests
            if limit is not None and self.num_in_flight >= limit:
                raise APIError(
                    429,
                    f"too many requests in flight (max_concurrent_requests={limit}); "
                    f"retry after {self.retry_after_s} s",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self.num_in_flight += 1

    def release(self) -> None:
        with self._lock:
            assert self.num_in_flight > 0, "released more requests than were admitted"
            self.num_in_flight -= 1
