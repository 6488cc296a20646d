"""/v1/completions and /v1/chat/completions through a real uvicorn server and the official
openai client: streaming and not, n, logprobs, stop, seeds, usage, exact SSE framing."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
from serving_fixtures import MODEL_NAME

PROMPT = "def fibonacci(n):"
MESSAGES = [{"role": "user", "content": "What does os.path.join do?"}]
# Greedy and no EOS: every answer has exactly max_tokens tokens and is reproducible.
FIXED = dict(temperature=0, extra_body={"ignore_eos": True, "return_token_ids": True})


@pytest.fixture(scope="module")
def client(api_server):
    with openai.OpenAI(base_url=api_server.url + "/v1", api_key="unused") as client:
        yield client


def prompt_len(api_server, **body) -> int:
    return httpx.post(api_server.url + "/tokenize", json=body).json()["count"]


def test_completion_text_tokens_and_usage(client, api_server):
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=6, **FIXED)
    choice = out.choices[0]
    assert out.object == "text_completion" and out.model == MODEL_NAME
    assert choice.finish_reason == "length" and choice.index == 0
    assert len(choice.model_extra["token_ids"]) == 6
    decoded = httpx.post(
        api_server.url + "/detokenize", json={"tokens": choice.model_extra["token_ids"]}
    ).json()["prompt"]
    assert choice.text and decoded.startswith(choice.text)  # a split UTF-8 tail is held back
    assert out.usage.prompt_tokens == prompt_len(api_server, prompt=PROMPT)
    assert out.usage.completion_tokens == 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + 6


def test_completion_stream_matches_non_stream(client):
    whole = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8, **FIXED)
    chunks = list(client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=8, stream=True,
        stream_options={"include_usage": True}, **FIXED,
    ))
    *content, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 8
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in content)
    assert "".join(c.choices[0].text for c in content) == whole.choices[0].text
    ids = [i for c in content for i in c.choices[0].model_extra["token_ids"]]
    assert ids == whole.choices[0].model_extra["token_ids"]
    assert content[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])


def test_sse_framing_is_exact(api_server):
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 4, "stream": True,
            "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", api_server.url + "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") and "\n" not in e for e in events[:-2])
    assert [len(p["choices"]) for p in payloads] == [1, 1, 1, 1, 0]
    assert payloads[-1]["usage"]["completion_tokens"] == 4
    assert {p["id"] for p in payloads} == {payloads[0]["id"]}


def test_chat_stream_matches_non_stream(client, api_server):
    whole = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                           max_completion_tokens=7, **FIXED)
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens == 7
    assert whole.usage.prompt_tokens == prompt_len(api_server, messages=MESSAGES)
    chunks = list(client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_completion_tokens=7, stream=True,
        stream_options={"include_usage": True}, **FIXED,
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "length"


def test_n_samples_and_batched_prompts(client):
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=5, n=2,
                                    temperature=1.0, seed=7, extra_body={"ignore_eos": True})
    assert [c.index for c in out.choices] == [0, 1]
    assert out.usage.completion_tokens == 10
    single = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=5, **FIXED)
    assert out.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once
    batch = client.completions.create(model=MODEL_NAME, prompt=[PROMPT, "import os"],
                                      max_tokens=3, n=2, **FIXED)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text == single.choices[0].text[
        : len(batch.choices[0].text)]
    assert batch.usage.completion_tokens == 12
    streamed = list(client.completions.create(model=MODEL_NAME, prompt=[PROMPT, "import os"],
                                              max_tokens=3, stream=True, **FIXED))
    assert {c.choices[0].index for c in streamed} == {0, 1}


def test_token_id_prompt_equals_text_prompt(client, api_server):
    ids = httpx.post(api_server.url + "/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    by_text = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4, **FIXED)
    by_ids = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=4, **FIXED)
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_completion_logprobs_greedy_picks_the_top_token(client):
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=5, logprobs=3,
                                    **FIXED)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    if "\ufffd" not in "".join(lp.tokens):  # bytes of one character decode apart as U+FFFD
        assert "".join(lp.tokens) == out.choices[0].text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 3 and logprob <= 0
        if len(top) == 3:  # no two of the top 3 share a text (a dict key)
            assert math.isclose(logprob, max(top.values()), rel_tol=1e-5)
            assert top[token] == pytest.approx(logprob)


def test_chat_logprobs(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=4,
                                         logprobs=True, top_logprobs=2, **FIXED)
    content = out.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.bytes == list(entry.token.encode())
    plain = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=4,
                                           **FIXED)
    assert plain.choices[0].logprobs is None


def test_stop_string_and_stop_token(client):
    base = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, **FIXED)
    text, ids = base.choices[0].text, base.choices[0].model_extra["token_ids"]
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, stop=[stop],
                                    **FIXED)
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].model_extra["stop_reason"] == stop
    kept = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=12, stop=stop, temperature=0,
        extra_body={"ignore_eos": True, "include_stop_str_in_output": True},
    )
    assert kept.choices[0].text == text[: text.index(stop) + len(stop)]
    by_token = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0,
        extra_body={"ignore_eos": True, "stop_token_ids": [ids[3]], "return_token_ids": True},
    )
    first = ids.index(ids[3])
    assert by_token.choices[0].model_extra["token_ids"] == ids[: first + 1]
    assert by_token.choices[0].finish_reason == "stop"
    assert by_token.choices[0].model_extra["stop_reason"] == ids[3]


def test_seed_reproduces_and_extras_are_accepted(client):
    kwargs = dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=1234,
                  presence_penalty=0.5, frequency_penalty=0.5,
                  extra_body={"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1,
                              "min_tokens": 2, "ignore_eos": True, "top_p": 0.9,
                              "skip_special_tokens": False})
    first = client.completions.create(**kwargs)
    assert client.completions.create(**kwargs).choices[0].text == first.choices[0].text
    assert first.usage.completion_tokens == 6


def test_models_tokenize_detokenize_version(api_server):
    url = api_server.url
    models = httpx.get(url + "/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == MODEL_NAME and models["data"][0]["max_model_len"] == 256
    tokens = httpx.post(url + "/tokenize", json={"prompt": "hello world",
                                                 "return_token_strs": True}).json()
    assert tokens["count"] == len(tokens["tokens"]) == len(tokens["token_strs"])
    text = httpx.post(url + "/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"]
    assert text == "hello world"
    chat = httpx.post(url + "/tokenize", json={"messages": MESSAGES}).json()
    assert chat["count"] > tokens["count"]
    assert httpx.get(url + "/version").json()["version"] == __import__("lodger").__version__
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    assert httpx.get(url + "/ready").status_code == 200


def test_openapi_schema_lists_routes_and_models(api_server):
    schema = httpx.get(api_server.url + "/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize",
                 "/health", "/metrics"):
        assert path in schema["paths"]
    post = schema["paths"]["/v1/completions"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/CompletionRequest")
    assert "max_tokens" in schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert "ChatCompletionStreamResponse" in schema["components"]["schemas"]
