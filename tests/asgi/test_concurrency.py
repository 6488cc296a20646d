"""Many streams at once through the server: all complete with the right token counts; client
disconnects abort their requests and give every KV block back."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from serving_fixtures import MODEL_NAME, slowed_steps, wait_idle


def test_64_streams_then_32_cancelled(api_server, tiny_engine):
    wait_idle(tiny_engine)
    aborted_before = tiny_engine.timing().num_aborted_requests

    async def full_stream(client: openai.AsyncOpenAI, i: int) -> tuple[int, int, int]:
        max_tokens = 8 + i % 9  # 8..16 tokens
        stream = await client.completions.create(
            model=MODEL_NAME, prompt=f"def f{i}(x):", max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, "return_token_ids": True},
        )
        num_ids, usage = 0, None
        async for chunk in stream:
            if chunk.choices:
                num_ids += len(chunk.choices[0].model_extra["token_ids"])
            usage = chunk.usage or usage
        return max_tokens, num_ids, usage.completion_tokens

    async def cancelled_stream(http: httpx.AsyncClient, i: int) -> None:
        body = {"prompt": f"class C{i}:", "max_tokens": 200, "ignore_eos": True,
                "stream": True}
        async with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.aiter_lines()
            for _ in range(2):  # two tokens in, the client goes away
                line = await anext(lines)
                while not line:
                    line = await anext(lines)
                assert json.loads(line.removeprefix("data: "))["choices"][0]["finish_reason"] \
                    is None

    async def main():
        async with openai.AsyncOpenAI(base_url=api_server.url + "/v1", api_key="x") as client:
            results = await asyncio.gather(*(full_stream(client, i) for i in range(64)))
        for max_tokens, num_ids, completion_tokens in results:
            assert num_ids == completion_tokens == max_tokens
        async with httpx.AsyncClient(base_url=api_server.url, timeout=60) as http:
            await asyncio.gather(*(cancelled_stream(http, i) for i in range(32)))

    asyncio.run(main())
    stats = wait_idle(tiny_engine)  # nothing running or waiting, every block free
    assert stats.kv_cache_usage == 0.0
    assert tiny_engine.timing().num_aborted_requests - aborted_before == 32
    start = time.monotonic()
    answer = httpx.post(api_server.url + "/v1/completions",
                        json={"prompt": "next", "max_tokens": 4, "ignore_eos": True}).json()
    assert answer["usage"]["completion_tokens"] == 4
    assert time.monotonic() - start < 5.0  # not stuck behind leftovers of the aborted ones


def test_disconnect_during_a_non_streaming_request_aborts_it(api_server, tiny_engine):
    wait_idle(tiny_engine)
    aborted_before = tiny_engine.timing().num_aborted_requests
    body = {"prompt": "while True:", "max_tokens": 240, "ignore_eos": True}
    with slowed_steps(tiny_engine, 0.01), pytest.raises(httpx.ReadTimeout):
        # the client gives up long before 240 tokens (at least 2.4 s) are generated
        httpx.post(api_server.url + "/v1/completions", json=body, timeout=0.5)
    wait_idle(tiny_engine)
    assert tiny_engine.timing().num_aborted_requests == aborted_before + 1
