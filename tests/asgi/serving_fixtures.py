"""Shared by tests/asgi, tests/sdk and tests/examples: a tiny AsyncEngine and real uvicorn
servers on 127.0.0.1 (random free port), each in its own thread and event loop."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from lodger.asgi import create_app
from lodger.engine import AsyncEngine

MODEL_NAME = "tiny"
# Small enough for a shared 2-core machine, large enough for 64 streams of 16 tokens.
ENGINE_OPTIONS = dict(max_model_len=256, num_kv_blocks=400, max_num_seqs=64,
                      max_num_batched_tokens=1024)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on a free port in a daemon thread (its own event loop)."""

    def __init__(self, app, lifespan: str = "on"):
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan=lifespan)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start in 60 s"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "uvicorn did not stop"


def wait_ready(url: str, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    """Poll GET url until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} was not ready after {timeout} s"
        time.sleep(0.1)


def wait_idle(engine: AsyncEngine, timeout: float = 20.0):
    """Wait until the engine runs nothing and its KV pool is whole; returns the stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = engine.stats()
        if (stats.num_running == 0 and stats.num_waiting == 0
                and stats.num_free_blocks == stats.num_blocks):
            return stats
        assert time.monotonic() < deadline, f"engine not idle after {timeout} s: {stats}"
        time.sleep(0.02)


@contextlib.contextmanager
def slowed_steps(engine: AsyncEngine, seconds: float):
    """Make every engine step take `seconds` longer, so that requests stay in flight."""
    core = engine._core
    assert core is not None, "the engine is not loaded"
    step = core.step

    def slow_step():
        time.sleep(seconds)
        return step()

    core.step = slow_step
    try:
        yield
    finally:
        del core.step  # back to the class's method


def start_example(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """A uvicorn subprocess (for the examples), its output in a temp file."""
    log = open(cwd / f".uvicorn-{os.getpid()}-{time.monotonic_ns()}.log", "w+b")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *args], cwd=cwd, env={**os.environ, **env},
        stdout=log, stderr=subprocess.STDOUT,
    )
    process.log_file = log  # type: ignore[attr-defined]
    return process


def stop_example(process: subprocess.Popen) -> str:
    """Stop it (SIGTERM, uvicorn's graceful shutdown); returns its output."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log = process.log_file  # type: ignore[attr-defined]
    log.seek(0)
    output = log.read().decode(errors="replace")
    log.close()
    os.unlink(log.name)
    return output


@pytest.fixture(scope="session")
def tiny_engine(llama_dir):
    """One AsyncEngine for the serving tests; tests leave it idle."""
    engine = AsyncEngine(model=str(llama_dir), **ENGINE_OPTIONS)
    yield engine
    engine.close(drain_timeout=5)


@pytest.fixture(scope="session")
def api_server(tiny_engine):
    """The lodger app over `tiny_engine`, no API key, under uvicorn."""
    with ServerThread(create_app(engine=tiny_engine, served_model_name=MODEL_NAME)) as server:
        wait_ready(server.url + "/ready")
        yield server
