"""One test suite, run against both SDK clients: in-process (over the engine) and remote
(over HTTP to a real uvicorn server). Same calls, same types, same values, same errors."""

from __future__ import annotations

import pytest
from serving_fixtures import MODEL_NAME, slowed_steps, wait_idle

import lodger.sdk as sdk
from lodger.sdk import Delta, Generation, SyncClient, connect

pytestmark = pytest.mark.anyio

PROMPT = "def fibonacci(n):"
MESSAGES = [{"role": "user", "content": "What does os.path.join do?"}]
FIXED = dict(temperature=0, ignore_eos=True)  # greedy, exactly max_tokens tokens


@pytest.fixture(params=["in-process", "remote"])
def make_client(request, tiny_engine, api_server):
    """A factory: clients are built inside each test's event loop."""
    if request.param == "in-process":
        return lambda: connect(engine=tiny_engine, served_model_name=MODEL_NAME)
    return lambda: connect(base_url=api_server.url + "/v1", api_key="unused")


async def collect(stream) -> tuple[list[Delta], sdk.Usage | None]:
    deltas = [delta async for delta in stream]
    return deltas, stream.usage


async def test_generate(make_client):
    async with make_client() as client:
        out = await client.generate(PROMPT, max_tokens=6, **FIXED)
        assert isinstance(out, Generation) and out.model == MODEL_NAME
        assert out.finish_reason == "length" and out.text
        assert len(out.token_ids) == out.usage.completion_tokens == 6
        assert out.prompt_token_ids == await client.tokenize(PROMPT)
        assert out.usage.prompt_tokens == len(out.prompt_token_ids)
        assert out.usage.total_tokens == out.usage.prompt_tokens + 6


async def test_stream_adds_up_to_generate(make_client):
    async with make_client() as client:
        whole = await client.generate(PROMPT, max_tokens=8, **FIXED)
        deltas, usage = await collect(client.stream(PROMPT, max_tokens=8, **FIXED))
        assert "".join(d.text for d in deltas) == whole.text
        assert [i for d in deltas for i in d.token_ids] == whole.token_ids
        assert deltas[-1].finish_reason == "length"
        assert all(d.finish_reason is None for d in deltas[:-1])
        assert usage == whole.usage


async def test_chat_and_chat_stream(make_client):
    async with make_client() as client:
        whole = await client.chat(MESSAGES, max_tokens=7, **FIXED)
        assert len(whole.token_ids) == whole.usage.completion_tokens == 7
        deltas, usage = await collect(client.chat_stream(MESSAGES, max_tokens=7, **FIXED))
        assert "".join(d.text for d in deltas) == whole.text
        assert [i for d in deltas for i in d.token_ids] == whole.token_ids
        assert usage == whole.usage and deltas[-1].finish_reason == "length"


async def test_n_logprobs_and_stop(make_client):
    async with make_client() as client:
        two = await client.generate(PROMPT, max_tokens=4, n=2, seed=3, ignore_eos=True)
        assert [c.index for c in two.choices] == [0, 1]
        assert two.usage.completion_tokens == 8
        scored = await client.chat(MESSAGES, max_tokens=3, logprobs=2, **FIXED)
        assert len(scored.logprobs) == 3
        assert all(len(lp.top_logprobs) == 2 for lp in scored.logprobs)
        assert all(lp.logprob == pytest.approx(lp.top_logprobs[0].logprob)
                   for lp in scored.logprobs)
        base = await client.generate(PROMPT, max_tokens=10, **FIXED)
        stop = base.text[4:6]
        cut = await client.generate(PROMPT, max_tokens=10, stop=[stop], **FIXED)
        assert cut.text == base.text[: base.text.index(stop)]
        assert cut.finish_reason == "stop" and cut.choices[0].stop_reason == stop


async def test_models(make_client):
    async with make_client() as client:
        (model,) = await client.models()
        assert model.id == MODEL_NAME and model.max_model_len == 256


async def test_errors_are_the_same(make_client):
    async with make_client() as client:
        with pytest.raises(sdk.BadRequestError) as bad:
            await client.generate(PROMPT, temperature=-1)
        assert bad.value.status_code == 400 and bad.value.param == "temperature"
        with pytest.raises(sdk.BadRequestError) as long:
            await collect(client.chat_stream([{"role": "user", "content": "word " * 600}]))
        assert long.value.code == "context_length_exceeded"
        assert long.value.param == "messages"
        with pytest.raises(TypeError, match="unknown sampling option"):
            await client.generate(PROMPT, beam_width=4)


async def test_closing_a_stream_aborts_its_request(make_client, tiny_engine):
    wait_idle(tiny_engine)
    before = tiny_engine.timing().num_aborted_requests
    async with make_client() as client:
        with slowed_steps(tiny_engine, 0.01):
            async with client.stream(PROMPT, max_tokens=200, **FIXED) as stream:
                for _ in range(2):
                    await anext(stream)
    wait_idle(tiny_engine)
    assert tiny_engine.timing().num_aborted_requests == before + 1


async def test_both_modes_answer_alike(tiny_engine, api_server):
    local = connect(engine=tiny_engine, served_model_name=MODEL_NAME)
    async with connect(base_url=api_server.url + "/v1") as remote:
        for call in ("generate", "chat"):
            prompt = PROMPT if call == "generate" else MESSAGES
            a = await getattr(local, call)(prompt, max_tokens=5, logprobs=1, **FIXED)
            b = await getattr(remote, call)(prompt, max_tokens=5, logprobs=1, **FIXED)
            assert a.model_dump(exclude={"id"}) == b.model_dump(exclude={"id"})
    await local.aclose()
    assert tiny_engine.is_running  # a shared engine is not the client's to shut down


@pytest.mark.parametrize("mode", ["in-process", "remote"])
def test_sync_client(mode, tiny_engine, api_server):
    if mode == "in-process":
        client = SyncClient(engine=tiny_engine, served_model_name=MODEL_NAME)
    else:
        client = SyncClient(base_url=api_server.url + "/v1")
    with client:
        whole = client.generate(PROMPT, max_tokens=5, **FIXED)
        assert "".join(d.text for d in client.stream(PROMPT, max_tokens=5, **FIXED)) == \
            whole.text
        assert client.chat(MESSAGES, max_tokens=2).usage.completion_tokens <= 2
        assert len(list(client.chat_stream(MESSAGES, max_tokens=3, **FIXED))) >= 1
        assert client.tokenize("hello") and client.models()[0].id == MODEL_NAME
        for _ in client.stream(PROMPT, max_tokens=100, **FIXED):
            break  # leaving early aborts the rest
    wait_idle(tiny_engine)
    with pytest.raises(RuntimeError, match="closed"):
        client.generate(PROMPT)
