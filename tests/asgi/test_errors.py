"""Every error answer: status, OpenAI's body shape, the field it names; bad requests never
disturb requests in flight."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from serving_fixtures import MODEL_NAME, ServerThread, slowed_steps, wait_idle

from lodger.asgi import create_app


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/completions", {"prompt": "a", "temperature": -1}, "temperature"),
        ("/v1/completions", {"prompt": "a", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "a", "n": 0}, "n"),
        ("/v1/completions", {"prompt": "a", "top_p": 1.5}, "top_p"),
        ("/v1/completions", {"prompt": "a", "logprobs": 21}, "logprobs"),
        ("/v1/completions", {"prompt": "a", "stop_token_ids": [-3]}, "stop_token_ids"),
        ("/v1/completions", {"prompt": "a", "echo": True}, "echo"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"max_tokens": 3}, "prompt"),
        ("/v1/completions", {"prompt": [5, 99999]}, "prompt_token_ids"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]},
         "messages.0.role"),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -2},
         "max_completion_tokens"),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": "x"}], "logprobs": True,
          "top_logprobs": 50}, "top_logprobs"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(api_server, route, body, param):
    error = error_of(httpx.post(api_server.url + route, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param.split(".")[-1] in error["message"] or param == "prompt_token_ids"


def test_prompt_over_context_length_is_400(api_server):
    long_prompt = "word " * 600  # well over max_model_len=256 tokens
    error = error_of(httpx.post(api_server.url + "/v1/completions",
                                json={"prompt": long_prompt}), 400)
    assert error["param"] == "prompt" and error["code"] == "context_length_exceeded"
    chat = {"messages": [{"role": "user", "content": long_prompt}], "stream": True}
    error = error_of(httpx.post(api_server.url + "/v1/chat/completions", json=chat), 400)
    assert error["param"] == "messages" and "max_model_len" in error["message"]


def test_unknown_model_route_and_method(api_server):
    error = error_of(httpx.post(api_server.url + "/v1/completions",
                                json={"model": "gpt-17", "prompt": "a"}), 404)
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert "gpt-17" in error["message"]
    error_of(httpx.get(api_server.url + "/v1/nothing-here"), 404)
    error_of(httpx.get(api_server.url + "/v1/completions"), 405)


def test_non_json_bodies(api_server):
    url = api_server.url + "/v1/completions"
    error = error_of(httpx.post(url, content=b"prompt=a",
                                headers={"content-type": "application/x-www-form-urlencoded"}),
                     415)
    assert error["code"] == "unsupported_media_type"
    error_of(httpx.post(url, content=b"hello"), 415)  # no content type, not JSON
    error = error_of(httpx.post(url, content=b"{not json",
                                headers={"content-type": "application/json"}), 400)
    assert error["code"] == "invalid_json"
    error_of(httpx.post(url, json=[1, 2]), 400)


def test_api_key(tiny_engine):
    app = create_app(engine=tiny_engine, api_key="sesame", served_model_name=MODEL_NAME)
    with ServerThread(app) as server:
        for method, route in [("GET", "/v1/models"), ("POST", "/v1/completions"),
                              ("POST", "/v1/chat/completions"), ("POST", "/tokenize")]:
            missing = httpx.request(method, server.url + route, json={"prompt": "a"})
            assert error_of(missing, 401)["code"] == "invalid_api_key"
            wrong = httpx.request(method, server.url + route, json={"prompt": "a"},
                                  headers={"Authorization": "Bearer sesame2"})
            error_of(wrong, 401)
        assert httpx.get(server.url + "/health").status_code == 200
        assert httpx.get(server.url + "/metrics").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").models.list()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sesame")
        assert client.models.list().data[0].id == MODEL_NAME
        out = client.completions.create(model=MODEL_NAME, prompt="a", max_tokens=2)
        assert out.usage.completion_tokens <= 2


def test_429_with_retry_after_when_full(tiny_engine):
    app = create_app(engine=tiny_engine, max_concurrent_requests=1, served_model_name="tiny")
    body = {"prompt": "a", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as http:
        with slowed_steps(tiny_engine, 0.05), http.stream("POST", "/v1/completions",
                                                           json=body) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # (a dropped iterator would close the response)
            assert next(lines).startswith("data: ")  # the first stream is running
            refused = http.post("/v1/completions", json={"prompt": "b", "max_tokens": 2})
            error = error_of(refused, 429)
            assert refused.headers["retry-after"] == "1"
            assert error["type"] == "rate_limit_error"
        wait_idle(tiny_engine)  # the first stream was abandoned: its request is aborted
        after = http.post("/v1/completions", json={"prompt": "b", "max_tokens": 2})
        assert after.status_code == 200


def test_bad_requests_do_not_disturb_requests_in_flight(api_server, tiny_engine):
    good = {"prompt": "import os", "max_tokens": 12, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    bad = [{"prompt": "a", "temperature": -5}, {"prompt": "x " * 600},
           {"model": "nope", "prompt": "a"}, {"prompt": "a", "max_tokens": "many"}]

    async def stream(http: httpx.AsyncClient) -> int:
        async with http.stream("POST", "/v1/completions", json=good) as response:
            assert response.status_code == 200
            events = [line async for line in response.aiter_lines() if line]
        assert events[-1] == "data: [DONE]"
        return json.loads(events[-2].removeprefix("data: "))["usage"]["completion_tokens"]

    async def main():
        async with httpx.AsyncClient(base_url=api_server.url, timeout=60) as http:
            streams = [asyncio.create_task(stream(http)) for _ in range(4)]
            answers = await asyncio.gather(*(http.post("/v1/completions", json=b)
                                             for b in bad * 3))
            assert {a.status_code for a in answers} == {400, 404}
            assert await asyncio.gather(*streams) == [12] * 4

    asyncio.run(main())
    wait_idle(tiny_engine)
