"""The examples, each started under uvicorn as its users would: the host's own view or route
and the mounted lodger API both answer, and the server stops cleanly."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
from serving_fixtures import free_port, start_example, stop_example, wait_ready

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def check_mounted_api(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/llm/v1", api_key="unused")
    (model,) = client.models.list().data
    answer = client.chat.completions.create(
        model=model.id, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        extra_body={"ignore_eos": True},
    )
    assert answer.usage.completion_tokens == 4
    chunks = list(client.completions.create(model=model.id, prompt="import os", max_tokens=3,
                                            stream=True, extra_body={"ignore_eos": True}))
    assert chunks[-1].choices[0].finish_reason == "length"


def check_generate_view(url: str) -> None:
    answer = httpx.get(url, params={"prompt": "def f(x):", "max_tokens": 5}, timeout=60).json()
    assert answer["finish_reason"] in ("stop", "length")
    assert 1 <= answer["usage"]["completion_tokens"] <= 5


def check_stream_view(url: str) -> None:
    with httpx.stream("GET", url, params={"max_tokens": 6}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        response.read()


def test_django_example(llama_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_example(
        ["lodger_demo.asgi:application", "--port", str(port), "--log-level", "warning"],
        cwd=EXAMPLES / "django_app",
        env={"LODGER_MODEL": str(llama_dir), "LODGER_MAX_MODEL_LEN": "256"},
    )
    try:
        wait_ready(url + "/llm/ready", process=process)
        check_generate_view(url + "/generate")
        check_generate_view(url + "/sync-generate")
        check_stream_view(url + "/stream")
        assert "llm/v1/chat/completions" in httpx.get(url + "/").text  # the chat page
        check_mounted_api(url)
        assert httpx.get(url + "/llm/metrics").text.count("vllm:") > 10
    finally:
        output = stop_example(process)
    assert "Traceback" not in output, output


def test_fastapi_example_with_the_remote_client(llama_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_example(
        ["fastapi_app:app", "--app-dir", str(EXAMPLES), "--port", str(port),
         "--log-level", "warning"],
        cwd=EXAMPLES,
        # the routes' client talks to this same server's mounted API, over HTTP
        env={"LODGER_MODEL": str(llama_dir), "LODGER_BASE_URL": url + "/llm/v1"},
    )
    try:
        wait_ready(url + "/llm/ready", process=process)
        check_generate_view(url + "/generate")
        check_stream_view(url + "/stream")
        check_mounted_api(url)
    finally:
        output = stop_example(process)
    assert "Traceback" not in output, output
