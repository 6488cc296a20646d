"""AsyncEngine: several event loops at once, no busy spin when idle, cancel and abort, a dead
engine (503s, error chunk, health), drain-then-abort shutdown, an app owning its engine."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import httpx
import pytest
from serving_fixtures import ENGINE_OPTIONS, ServerThread, slowed_steps, wait_idle, wait_ready

from lodger.asgi import create_app
from lodger.engine import AsyncEngine, EngineDeadError, SamplingParams
from lodger.engine.errors import EngineShutdownError

FIXED = dict(temperature=0, ignore_eos=True)


async def collect(engine: AsyncEngine, prompt, params: SamplingParams, request_id=None):
    """(text, token ids, finish reason) of sample 0."""
    text, ids, reason = "", [], None
    async for out in engine.generate(prompt, params, request_id):
        for c in out.outputs:
            text, ids, reason = text + c.text, ids + c.token_ids, c.finish_reason or reason
    return text, ids, reason


def test_generate_from_several_event_loops_at_once(tiny_engine):
    results: dict[int, list] = {}

    def serve_from_own_loop(index: int) -> None:
        async def main():
            params = SamplingParams(max_tokens=6 + index, **FIXED)
            return await asyncio.gather(*(collect(tiny_engine, f"x{i}", params)
                                          for i in range(4)))
        results[index] = asyncio.run(main())

    threads = [threading.Thread(target=serve_from_own_loop, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [0, 1, 2]
    for index, answers in results.items():
        assert [len(ids) for _, ids, _ in answers] == [6 + index] * 4
        assert {reason for _, _, reason in answers} == {"length"}
    wait_idle(tiny_engine)


def _thread_cpu_ticks(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_idle_engine_thread_sleeps(tiny_engine):
    wait_idle(tiny_engine)
    native_id = tiny_engine._thread.native_id
    before = _thread_cpu_ticks(native_id)
    time.sleep(1.0)
    assert _thread_cpu_ticks(native_id) - before <= 2  # <= 20 ms of CPU in 1 s: no spin


def test_cancel_and_abort(tiny_engine):
    async def main():
        params = SamplingParams(max_tokens=200, **FIXED)
        started = asyncio.Event()

        async def consume():
            async for _ in tiny_engine.generate("spin", params, "to-cancel"):
                started.set()

        with slowed_steps(tiny_engine, 0.005):
            task = asyncio.create_task(consume())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            outputs = []

            async def consume_all():
                async for out in tiny_engine.generate("abort me", params, "to-abort"):
                    outputs.append(out)
                    if len(outputs) == 2:
                        await tiny_engine.abort("to-abort")

            await asyncio.wait_for(consume_all(), timeout=30)
        assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "abort"
        assert len(outputs) >= 3
        await tiny_engine.abort("no-such-request")  # ignored

    before = tiny_engine.timing().num_aborted_requests
    asyncio.run(main())
    wait_idle(tiny_engine)
    assert tiny_engine.timing().num_aborted_requests == before + 2


def test_too_long_prompt_is_a_value_error_and_the_engine_goes_on(tiny_engine):
    async def main():
        with pytest.raises(ValueError, match="max_model_len"):
            await collect(tiny_engine, list(range(300)), SamplingParams())
        _, ids, _ = await collect(tiny_engine, "ok", SamplingParams(max_tokens=3, **FIXED))
        assert len(ids) == 3

    asyncio.run(main())


def _build_engine_off_the_main_thread(model_dir) -> AsyncEngine:
    built: list[AsyncEngine] = []
    thread = threading.Thread(target=lambda: built.append(
        AsyncEngine(model=str(model_dir), **ENGINE_OPTIONS)))
    thread.start()
    thread.join()
    return built[0]


def test_dead_engine(llama_dir):
    engine = _build_engine_off_the_main_thread(llama_dir)
    app = create_app(engine=engine, served_model_name="tiny")
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        wait_ready(server.url + "/ready")
        body = {"prompt": "a", "max_tokens": 200, "ignore_eos": True, "stream": True}
        with slowed_steps(engine, 0.01), http.stream("POST", "/v1/completions",
                                                     json=body) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: {")

            def boom():
                raise RuntimeError("simulated failure in a forward")

            engine._core.step = boom
            events = [line for line in lines if line]
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert events[-1] == "data: [DONE]"
        assert error["type"] == "service_unavailable_error" and error["code"] == "engine_dead"
        assert "simulated failure" in error["message"]
        assert engine.is_dead
        for route, payload in [("/v1/completions", {"prompt": "a"}),
                               ("/v1/chat/completions",
                                {"messages": [{"role": "user", "content": "a"}]})]:
            refused = http.post(route, json=payload)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_dead"
        assert http.get("/health").status_code == 503
        assert http.get("/ready").status_code == 503
        assert 'lodger:engine_dead{model_name="tiny"} 1' in http.get("/metrics").text
    with pytest.raises(EngineDeadError):
        engine.check_health()

    async def refused_at_once():
        with pytest.raises(EngineDeadError):
            await collect(engine, "a", SamplingParams())

    asyncio.run(asyncio.wait_for(refused_at_once(), timeout=5))
    engine.close()


def test_shutdown_drains_then_aborts(llama_dir):
    engine = AsyncEngine(model=str(llama_dir), **ENGINE_OPTIONS)

    async def main():
        await engine.wait_until_ready(timeout=120)
        with slowed_steps(engine, 0.01):
            short = asyncio.create_task(collect(engine, "a", SamplingParams(max_tokens=10,
                                                                           **FIXED)))
            long = asyncio.create_task(collect(engine, "b", SamplingParams(max_tokens=240,
                                                                          **FIXED)))
            await asyncio.sleep(0.05)
            await engine.shutdown(drain_timeout=1.0)
        assert (await short)[2] == "length" and len((await short)[1]) == 10
        assert (await long)[2] == "abort" and len((await long)[1]) < 240
        with pytest.raises(EngineShutdownError):
            await collect(engine, "c", SamplingParams())

    asyncio.run(main())
    assert not engine.is_running and not engine._thread.is_alive()


def test_app_owning_its_engine(llama_dir):
    app = create_app(model=str(llama_dir), served_model_name="owned", **ENGINE_OPTIONS)
    state = app.state.lodger
    assert not state.has_engine  # built by the lifespan, not at create_app()
    with ServerThread(app) as server:
        wait_ready(server.url + "/ready")
        answer = httpx.post(server.url + "/v1/completions",
                            json={"model": "owned", "prompt": "a", "max_tokens": 2})
        assert answer.status_code == 200
    assert state.has_engine and not state.engine.is_running  # shut down with the app
    with pytest.raises(TypeError, match="unknown engine option"):
        create_app(model=str(llama_dir), max_batch_size=3)
