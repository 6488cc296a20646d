"""End to end on CPU in float32: lodger's offline API against transformers itself."""

from __future__ import annotations

import json
import shutil

import pytest
from hf_reference import hf_greedy, hf_logprobs

from lodger.engine import LLM, SamplingParams

PROMPTS = [
    "def fibonacci(n):",
    "The json module",
    "Return a new list containing all items from the iterable in ascending order.",
    "x",
]
NUM_NEW_TOKENS = 40
# exactly NUM_NEW_TOKENS tokens, EOS masked until then: as hf_reference.hf_generate
GREEDY = SamplingParams(temperature=0.0, max_tokens=NUM_NEW_TOKENS, min_tokens=NUM_NEW_TOKENS)
GREEDY_IGNORE_EOS = SamplingParams(temperature=0.0, max_tokens=NUM_NEW_TOKENS, ignore_eos=True)


def make_llm(model_dir, **options) -> LLM:
    options = {"device": "cpu", "dtype": "float32", "max_model_len": 256, **options}
    return LLM(model=str(model_dir), **options)


def greedy_ids(llm: LLM, prompts=PROMPTS, params=GREEDY) -> list[list[int]]:
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [out.outputs[0].token_ids for out in outputs]


def test_greedy_equals_transformers_generate(model_dir):
    llm = make_llm(model_dir)
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    tokenizer = llm.get_tokenizer()
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        assert output.prompt == prompt
        assert output.prompt_token_ids == tokenizer.encode(prompt)
        expected = hf_greedy(model_dir, output.prompt_token_ids, NUM_NEW_TOKENS)
        completion = output.outputs[0]
        assert completion.token_ids == expected
        assert len(set(expected)) > 3, "random model degenerated; the comparison proves little"
        assert completion.finish_reason == "length"
        assert completion.text == tokenizer.decode(expected, skip_special_tokens=True)


@pytest.fixture(scope="module")
def llama_reference(llama_dir):
    """Greedy ids of prompts that share a long prefix, from transformers."""
    shared = "Return a new list containing all items from the iterable in ascending order. " * 3
    prompts = [shared + tail for tail in ("A", "key function", "reverse flag", "")] + PROMPTS[:2]
    llm = make_llm(llama_dir)
    tokenizer = llm.get_tokenizer()
    expected = [hf_greedy(llama_dir, tokenizer.encode(p), NUM_NEW_TOKENS) for p in prompts]
    return prompts, expected


@pytest.mark.parametrize(
    "options",
    [
        {"enable_prefix_caching": False},
        {"enable_prefix_caching": True},
        {"max_num_batched_tokens": 32},  # chunked prefill, mixed prefill + decode steps
        {"block_size": 8, "num_kv_blocks": 24, "max_num_batched_tokens": 48},  # preemption
        {"block_size": 8, "num_kv_blocks": 24, "max_num_batched_tokens": 48,
         "async_scheduling": False},
    ],
    ids=["no-prefix-cache", "prefix-cache", "chunked-prefill", "preemption",
         "preemption-sync-scheduling"],
)
def test_same_tokens_under_caching_chunking_and_preemption(llama_dir, llama_reference, options):
    prompts, expected = llama_reference
    llm = make_llm(llama_dir, **options)
    # twice: the second run hits the prefix cache left by the first when caching is on
    assert greedy_ids(llm, prompts) == expected
    assert greedy_ids(llm, prompts) == expected
    stats = llm.engine.stats()
    if options.get("enable_prefix_caching", True) and "num_kv_blocks" not in options:
        assert stats.prefix_cache_hits > 0
    if not options.get("enable_prefix_caching", True):
        assert stats.prefix_cache_hits == 0
    if "num_kv_blocks" in options:
        assert stats.num_preemptions > 0, "the tiny pool was meant to force preemption"
    assert stats.num_free_blocks == stats.num_blocks


def test_logprobs_agree_with_transformers(qwen3_dir):
    llm = make_llm(qwen3_dir)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=5)
    (output,) = llm.generate([PROMPTS[2]], params, use_tqdm=False)
    completion = output.outputs[0]
    reference = hf_logprobs(qwen3_dir, output.prompt_token_ids, completion.token_ids)
    assert len(completion.logprobs) == len(completion.token_ids)
    total = 0.0
    for step, (token_id, position) in enumerate(
        zip(completion.token_ids, completion.logprobs, strict=True)
    ):
        assert next(iter(position)) == token_id, "the sampled token comes first"
        assert position[token_id].rank == 1  # greedy
        top = reference[step].topk(5)
        for token, logprob in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            assert position[token].logprob == pytest.approx(logprob, abs=1e-4)
            assert position[token].decoded_token is not None
        total += position[token_id].logprob
    assert completion.cumulative_logprob == pytest.approx(total, abs=1e-4)


def test_pool_whole_after_finished_and_aborted_requests(llama_dir):
    llm = make_llm(llama_dir, block_size=8, num_kv_blocks=40, max_num_batched_tokens=40)
    core = llm.engine
    params = SamplingParams(temperature=0.8, max_tokens=30, ignore_eos=True, seed=1)
    for i in range(8):
        core.add_request(f"r{i}", PROMPTS[i % 4] * (1 + i % 3), params)
    for _ in range(3):
        core.step()
    core.abort_request("r0")  # running
    core.abort_request("r7")  # most likely still waiting
    for _ in range(10):
        core.step()
    core.abort_request("r3")
    core.abort_request("unknown-id")  # ignored
    finished = set()
    while core.has_unfinished_requests():
        finished.update(out.request_id for out in core.step() if out.finished)
    assert finished >= {"r1", "r2", "r4", "r5", "r6"}
    assert not finished & {"r0", "r3", "r7"}
    stats = core.stats()
    assert stats.num_running == stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_blocks
    assert stats.kv_cache_usage == 0.0


def test_seeded_sampling_independent_of_batch(llama_dir):
    llm = make_llm(llama_dir)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=20, ignore_eos=True, seed=7)
    other = SamplingParams(temperature=1.0, max_tokens=25, ignore_eos=True)
    alone = llm.generate([PROMPTS[0]], seeded, use_tqdm=False)[0].outputs[0].token_ids
    crowd = llm.generate(PROMPTS[1:] + [PROMPTS[0]], [other] * 3 + [seeded], use_tqdm=False)
    assert crowd[-1].outputs[0].token_ids == alone
    unseeded = llm.generate([PROMPTS[0]] * 2, other, use_tqdm=False)
    assert unseeded[0].outputs[0].token_ids != unseeded[1].outputs[0].token_ids


def test_n_samples_share_the_prompt(llama_dir):
    llm = make_llm(llama_dir)
    params = SamplingParams(n=3, temperature=1.0, max_tokens=10, ignore_eos=True, seed=3)
    (output,) = llm.generate([PROMPTS[2]], params, use_tqdm=False)
    assert [c.index for c in output.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 10 for c in output.outputs)
    assert len({tuple(c.token_ids) for c in output.outputs}) > 1
    (again,) = llm.generate([PROMPTS[2]], params, use_tqdm=False)
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in output.outputs]


def test_stop_strings_across_token_boundaries(llama_dir):
    llm = make_llm(llama_dir)
    (full,) = llm.generate([PROMPTS[0]], GREEDY, use_tqdm=False)
    tokenizer = llm.get_tokenizer()
    ids = full.outputs[0].token_ids
    # a stop string made of the end of token 5's text and the start of token 6's
    before = tokenizer.decode(ids[:6], skip_special_tokens=True)
    through = tokenizer.decode(ids[:7], skip_special_tokens=True)
    stop = before[-2:] + through[len(before) :][:2]
    assert len(stop) >= 3, "tokens too short to span a boundary"
    text = full.outputs[0].text
    cut = text.index(stop)
    for include, expected in ((False, text[:cut]), (True, text[: cut + len(stop)])):
        params = SamplingParams(
            temperature=0.0, max_tokens=NUM_NEW_TOKENS, stop=[stop],
            include_stop_str_in_output=include,
        )
        (out,) = llm.generate([PROMPTS[0]], params, use_tqdm=False)
        assert out.outputs[0].text == expected
        assert out.outputs[0].finish_reason == "stop"
        assert out.outputs[0].stop_reason == stop
    assert llm.engine.stats().num_free_blocks == llm.engine.stats().num_blocks


def test_stop_tokens_min_tokens_and_ignore_eos(llama_dir):
    llm = make_llm(llama_dir)
    ids = greedy_ids(llm, [PROMPTS[1]], GREEDY_IGNORE_EOS)[0]
    stop_id = ids[3]
    first = ids.index(stop_id)
    params = SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[stop_id])
    out = llm.generate([PROMPTS[1]], params, use_tqdm=False)[0].outputs[0]
    assert out.token_ids == ids[: first + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop_id)
    # the EOS: the same token made the tokenizer's eos for this engine
    llm.engine.tokenizer.eos_token_id = stop_id
    eos_stopped = llm.generate([PROMPTS[1]], SamplingParams(temperature=0.0, max_tokens=30),
                               use_tqdm=False)[0].outputs[0]
    assert eos_stopped.token_ids == ids[: first + 1] and eos_stopped.finish_reason == "stop"
    ignored = llm.generate([PROMPTS[1]], SamplingParams(temperature=0.0, max_tokens=30,
                                                        ignore_eos=True), use_tqdm=False)
    assert ignored[0].outputs[0].token_ids == ids[:30]
    min_tokens = first + 3
    held = llm.generate([PROMPTS[1]], SamplingParams(temperature=0.0, max_tokens=30,
                                                     min_tokens=min_tokens), use_tqdm=False)
    held_ids = held[0].outputs[0].token_ids
    assert len(held_ids) >= min_tokens
    assert stop_id not in held_ids[:min_tokens]


def test_generation_config_eos_ids_stop_unless_ignored(llama_dir, tmp_path):
    model_dir = tmp_path / "llama"
    shutil.copytree(llama_dir, model_dir)
    ids = greedy_ids(make_llm(model_dir), [PROMPTS[1]], GREEDY_IGNORE_EOS)[0]
    extra_eos = ids[4]
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, extra_eos]}))
    llm = make_llm(model_dir)
    out = llm.generate([PROMPTS[1]], SamplingParams(temperature=0.0, max_tokens=30),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == ids[: ids.index(extra_eos) + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", extra_eos)
    assert greedy_ids(llm, [PROMPTS[1]], GREEDY_IGNORE_EOS)[0] == ids


def test_max_model_len_rejected_at_submission(llama_dir):
    llm = make_llm(llama_dir, max_model_len=32)
    long_prompt = {"prompt_token_ids": list(range(3, 35))}
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([long_prompt], GREEDY, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    # the engine is unharmed, and a long max_tokens is cut at max_model_len
    (out,) = llm.generate([{"prompt_token_ids": list(range(3, 23))}], GREEDY, use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 12
    assert out.outputs[0].finish_reason == "length"


def test_bad_prompt_inputs_are_named(llama_dir):
    llm = make_llm(llama_dir)
    with pytest.raises(ValueError, match="prompt_token_ids"):
        llm.generate([{"prompt_token_ids": [1, 10**9]}], use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        llm.generate([{"prompt_token_ids": []}], use_tqdm=False)
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(PROMPTS, [GREEDY], use_tqdm=False)
    with pytest.raises(ValueError, match="stop_token_ids"):
        llm.generate(PROMPTS, SamplingParams(stop_token_ids=[10**6]), use_tqdm=False)
    with pytest.raises(TypeError, match="unknown engine option"):
        make_llm(llama_dir, max_num_seq=3)


def test_chat_applies_the_template(llama_dir):
    llm = make_llm(llama_dir)
    messages = [{"role": "user", "content": "What does heapq do?"}]
    (out,) = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                      use_tqdm=False)
    assert out.prompt.startswith("<|im_start|>user\nWhat does heapq do?<|im_end|>")
    assert out.prompt.endswith("<|im_start|>assistant\n")
    assert len(out.outputs[0].token_ids) == 8


def count_deferred_inputs(llm: LLM, monkeypatch) -> list[int]:
    """The list each step then appends its number of input ids taken on the device from
    the previous step's sampled ids."""
    builder = llm.engine.runner.inputs
    prepare = builder.prepare
    num_deferred: list[int] = []

    def spy(*args):
        inputs = prepare(*args)
        num_deferred.append(inputs.num_deferred)
        return inputs

    monkeypatch.setattr(builder, "prepare", spy)
    return num_deferred


def test_async_and_sync_scheduling_agree(llama_dir, monkeypatch):
    """Async scheduling (each step launched before the previous one's tokens reach the
    host) gives exactly the tokens, logprobs and finish reasons of synchronous scheduling,
    for seeded sampling, penalties (which make the engine wait), min_tokens, stop strings,
    EOS and n > 1; and it does take tokens from the step still running."""
    params = [
        SamplingParams(temperature=0.9, top_k=20, max_tokens=24, seed=11, logprobs=2),
        SamplingParams(temperature=0.0, max_tokens=30, min_tokens=5, stop=["e"]),
        SamplingParams(temperature=1.0, max_tokens=16, seed=5, frequency_penalty=0.5),
        SamplingParams(n=2, temperature=0.7, max_tokens=12, seed=3, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=40),
    ]
    results = {}
    for async_scheduling in (False, True):
        llm = make_llm(llama_dir, async_scheduling=async_scheduling, max_num_batched_tokens=24)
        num_deferred = count_deferred_inputs(llm, monkeypatch)
        outputs = llm.generate(PROMPTS + PROMPTS[:2], params + params[:1], use_tqdm=False)
        results[async_scheduling] = [
            [(c.token_ids, c.text, c.finish_reason, c.logprobs) for c in out.outputs]
            for out in outputs
        ]
        assert (sum(num_deferred) > 0) == async_scheduling
        stats = llm.engine.stats()
        assert stats.num_free_blocks == stats.num_blocks
    assert results[True] == results[False]


def test_penalised_requests_wait_for_their_previous_token(llama_dir, monkeypatch):
    """A penalty needs the request's exact output ids, so under async scheduling a step is
    never launched past a penalised request's pending token: no input id comes from the
    step still running."""
    llm = make_llm(llama_dir)
    num_deferred = count_deferred_inputs(llm, monkeypatch)
    params = SamplingParams(temperature=0.0, max_tokens=12, repetition_penalty=1.5)
    llm.generate(PROMPTS[:2], params, use_tqdm=False)
    assert len(num_deferred) >= 12 and not any(num_deferred)
