"""The remote client's retries against a real (scripted) HTTP server: 429 with Retry-After,
502/503/504, connection errors and timeouts are retried; other 4xx never are."""

from __future__ import annotations

import asyncio
import time

import pytest
from serving_fixtures import ServerThread, free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import lodger.sdk as sdk
from lodger.sdk import connect

pytestmark = pytest.mark.anyio

COMPLETION = {
    "id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "text": "hi", "finish_reason": "length", "logprobs": None,
                 "token_ids": [5, 6]}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}


def error(status: int, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": f"scripted {status}", "type": "x", "param": None,
                      "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


class Script:
    """Answers each POST with the next scripted response; then with success."""

    def __init__(self):
        self.responses: list = []
        self.num_calls = 0
        self.delay_s = 0.0

    async def completions(self, request: Request) -> Response:
        self.num_calls += 1
        body = await request.json()
        await asyncio.sleep(self.delay_s)
        if self.responses:
            return self.responses.pop(0)
        if body.get("stream"):
            chunk = ('data: {"id":"c","object":"text_completion","created":0,"model":"m",'
                     '"choices":[{"index":0,"text":"hi","finish_reason":"length"}]}\n\n')
            return StreamingResponse(iter([chunk, "data: [DONE]\n\n"]),
                                     media_type="text/event-stream")
        return JSONResponse(COMPLETION)


@pytest.fixture(scope="module")
def scripted():
    script = Script()
    app = Starlette(routes=[Route("/v1/completions", script.completions, methods=["POST"])])
    with ServerThread(app) as server:
        yield script, server.url + "/v1"


@pytest.fixture
def script(scripted):
    script, _ = scripted
    script.responses, script.num_calls, script.delay_s = [], 0, 0.0
    return script


def client_for(scripted, **options):
    return connect(base_url=scripted[1], model="m", max_retry_wait=0.05, **options)


async def test_5xx_are_retried(scripted, script):
    script.responses = [error(503), error(502), error(504)]
    async with client_for(scripted, max_retries=3) as client:
        out = await client.generate("x")
    assert out.text == "hi" and out.token_ids == [5, 6] and script.num_calls == 4


async def test_gives_up_after_max_retries(scripted, script):
    script.responses = [error(503)] * 3
    async with client_for(scripted, max_retries=2) as client:
        with pytest.raises(sdk.ServiceUnavailableError):
            await client.generate("x")
    assert script.num_calls == 3


async def test_429_waits_for_retry_after(scripted, script):
    script.responses = [error(429, {"Retry-After": "0.4"})]
    async with connect(base_url=scripted[1], model="m", max_retry_wait=5.0) as client:
        start = time.monotonic()
        out = await client.generate("x")
    assert out.text == "hi" and script.num_calls == 2
    assert time.monotonic() - start >= 0.4


@pytest.mark.parametrize(("status", "cls"), [(400, sdk.BadRequestError),
                                             (401, sdk.AuthenticationError),
                                             (404, sdk.NotFoundError),
                                             (500, sdk.InternalServerError)])
async def test_other_errors_are_not_retried(scripted, script, status, cls):
    script.responses = [error(status)]
    async with client_for(scripted, max_retries=3) as client:
        with pytest.raises(cls) as raised:
            await client.generate("x")
    assert raised.value.status_code == status and script.num_calls == 1
    assert raised.value.message == f"scripted {status}"


async def test_a_stream_is_retried_until_it_starts(scripted, script):
    script.responses = [error(503)]
    async with client_for(scripted) as client:
        deltas = [d async for d in client.stream("x")]
    assert [d.text for d in deltas] == ["hi"] and script.num_calls == 2


async def test_timeouts_are_retried_then_raised(scripted, script):
    script.delay_s = 1.0
    async with client_for(scripted, timeout=0.2, max_retries=1) as client:
        with pytest.raises(sdk.APITimeoutError):
            await client.generate("x")
    assert script.num_calls == 2


async def test_connection_errors_are_retried_then_raised():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    async with connect(base_url=url, model="m", max_retries=2, max_retry_wait=0.05) as client:
        start = time.monotonic()
        with pytest.raises(sdk.APIConnectionError):
            await client.generate("x")
    assert time.monotonic() - start < 5
