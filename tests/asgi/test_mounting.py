"""The app mounted in FastAPI and Starlette, and LodgerMiddleware around a host app (with
and without a lifespan of its own); plus the Prometheus metrics."""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
import openai
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from serving_fixtures import MODEL_NAME, ServerThread, wait_idle
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from lodger.asgi import LodgerMiddleware, create_app


def check_served_under(base: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="x")
    assert client.models.list().data[0].id == MODEL_NAME
    out = client.completions.create(model=MODEL_NAME, prompt="a", max_tokens=3,
                                    extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 3
    chunks = list(client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
        stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert httpx.get(base + "/health").status_code == 200
    assert httpx.get(base + "/openapi.json").status_code == 200


def test_fastapi_mount(tiny_engine):
    host = FastAPI()

    @host.get("/hello")
    def hello() -> dict:
        return {"host": "fastapi"}

    host.mount("/llm", create_app(engine=tiny_engine, served_model_name=MODEL_NAME))
    with ServerThread(host) as server:
        check_served_under(server.url + "/llm")
        assert httpx.get(server.url + "/hello").json() == {"host": "fastapi"}
        assert httpx.get(server.url + "/v1/models").status_code == 404  # only under /llm


def test_starlette_mount(tiny_engine):
    lodger_app = create_app(engine=tiny_engine, served_model_name=MODEL_NAME)
    host = Starlette(routes=[Route("/", lambda request: PlainTextResponse("home")),
                             Mount("/llm", lodger_app)])
    with ServerThread(host) as server:
        check_served_under(server.url + "/llm")
        assert httpx.get(server.url + "/").text == "home"


def test_middleware_chains_the_host_lifespan(tiny_engine):
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app):
        events.append("host startup")
        yield
        events.append("host shutdown")

    host = Starlette(routes=[Route("/x", lambda request: PlainTextResponse("host"))],
                     lifespan=lifespan)
    app = LodgerMiddleware(host, engine=tiny_engine, path_prefix="/llm",
                           served_model_name=MODEL_NAME)
    with ServerThread(app) as server:
        assert events == ["host startup"]
        check_served_under(server.url + "/llm")
        assert httpx.get(server.url + "/x").text == "host"
        assert httpx.get(server.url + "/llmx").status_code == 404  # not the prefix
    assert events == ["host startup", "host shutdown"]
    assert tiny_engine.is_running  # a shared engine outlives the app


def test_middleware_over_a_host_without_lifespan(tiny_engine):
    async def plain_host(scope, receive, send):  # like Django's ASGIHandler
        if scope["type"] != "http":
            raise ValueError("this host only handles http")
        await PlainTextResponse("plain")(scope, receive, send)

    app = LodgerMiddleware(plain_host, engine=tiny_engine, served_model_name=MODEL_NAME)
    with ServerThread(app, lifespan="on") as server:
        check_served_under(server.url + "/llm")
        assert httpx.get(server.url + "/anything").text == "plain"


def test_metrics_use_vllm_names_and_move(api_server, tiny_engine):
    def scrape() -> dict:
        text = httpx.get(api_server.url + "/metrics").text
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items()
                                                 if k not in ("model_name", "le"))))
                if "le" not in sample.labels:
                    samples[key] = sample.value
        return samples

    wait_idle(tiny_engine)
    before = scrape()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:num_preemptions_total",
                 "vllm:time_to_first_token_seconds_count",
                 "vllm:inter_token_latency_seconds_count",
                 "vllm:e2e_request_latency_seconds_count"):
        assert (name, ()) in before, name
    assert ("vllm:request_success_total", (("finished_reason", "length"),)) in before
    answer = httpx.post(api_server.url + "/v1/completions",
                        json={"prompt": "count me", "max_tokens": 5, "ignore_eos": True}).json()
    after = scrape()

    def grew(name, labels=()):
        return after[(name, labels)] - before[(name, labels)]

    assert grew("vllm:prompt_tokens_total") == answer["usage"]["prompt_tokens"]
    assert grew("vllm:generation_tokens_total") == 5
    assert grew("vllm:request_success_total", (("finished_reason", "length"),)) == 1
    assert grew("vllm:time_to_first_token_seconds_count") == 1
    assert grew("vllm:inter_token_latency_seconds_count") == 4
    assert grew("vllm:e2e_request_latency_seconds_count") == 1
    assert after[("vllm:num_requests_running", ())] == 0
