"""SamplingParams: defaults, normalisation and one rejected value per field."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from lodger.engine.sampling_params import MAX_NUM_LOGPROBS, SamplingParams


def test_defaults_match_vllm():
    params = SamplingParams()
    assert (params.n, params.temperature, params.top_p, params.top_k, params.min_p) == (
        1,
        1.0,
        1.0,
        0,
        0.0,
    )
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (
        0.0,
        0.0,
        1.0,
    )
    assert params.seed is None and params.stop == [] and params.stop_token_ids == []
    assert params.max_tokens == 16 and params.min_tokens == 0 and params.logprobs is None
    assert not params.ignore_eos and not params.include_stop_str_in_output
    assert params.skip_special_tokens
    assert not params.is_greedy and not params.has_penalties


def test_normalisation():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(stop_token_ids=(3, 4)).stop_token_ids == [3, 4]
    assert SamplingParams(stop_token_ids=None).stop_token_ids == []
    assert SamplingParams(top_k=-1).top_k == 0  # both spellings of "off"
    assert SamplingParams(top_k=0).top_k == 0
    assert SamplingParams(max_tokens=None).max_tokens is None
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(temperature=1e-7).is_greedy
    assert not SamplingParams(temperature=0.01).is_greedy
    assert SamplingParams(repetition_penalty=1.1).has_penalties
    assert SamplingParams(presence_penalty=-0.5).has_penalties


def test_edges_that_are_allowed():
    SamplingParams(top_p=1.0, min_p=1.0, top_k=1, presence_penalty=2, frequency_penalty=-2)
    SamplingParams(min_tokens=16, max_tokens=16, logprobs=0, seed=0)
    SamplingParams(logprobs=MAX_NUM_LOGPROBS, seed=-(2**63), repetition_penalty=0.01)
    SamplingParams(max_tokens=None, min_tokens=1000, seed=2**64 - 1)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("n", 0, "n must be >= 1, got 0"),
        ("n", 1.5, "n must be an integer"),
        ("temperature", -0.1, "temperature must be >= 0, got -0.1"),
        ("temperature", float("nan"), "temperature must be a finite number"),
        ("temperature", "hot", "temperature must be a finite number"),
        ("top_p", 1.5, "top_p must be in (0, 1], got 1.5"),
        ("top_p", 0.0, "top_p must be in (0, 1], got 0.0"),
        ("top_k", -2, "top_k must be 0 or -1 (off) or at least 1, got -2"),
        ("top_k", 2.0, "top_k must be an integer"),
        ("min_p", 1.1, "min_p must be in [0, 1], got 1.1"),
        ("min_p", -0.1, "min_p must be in [0, 1], got -0.1"),
        ("presence_penalty", 2.5, "presence_penalty must be in [-2, 2], got 2.5"),
        ("frequency_penalty", -3, "frequency_penalty must be in [-2, 2], got -3"),
        ("repetition_penalty", 0.0, "repetition_penalty must be > 0, got 0.0"),
        ("seed", 2**64, "seed must be in [-2**63, 2**64)"),
        ("seed", -(2**63) - 1, "seed must be >="),
        ("seed", "42", "seed must be an integer"),
        ("stop", 5, "stop must be a string, a list of strings or None"),
        ("stop", ["ok", ""], "stop must hold non-empty strings"),
        ("stop", [None], "stop must hold non-empty strings"),
        ("stop_token_ids", [1, -1], "stop_token_ids must hold token ids (ints >= 0), got -1"),
        ("stop_token_ids", 7, "stop_token_ids must be a list of token ids"),
        ("ignore_eos", 1, "ignore_eos must be True or False, got 1"),
        ("max_tokens", 0, "max_tokens must be >= 1, got 0"),
        ("max_tokens", 2.0, "max_tokens must be an integer"),
        ("min_tokens", -1, "min_tokens must be >= 0, got -1"),
        ("logprobs", -1, "logprobs must be >= 0, got -1"),
        ("logprobs", MAX_NUM_LOGPROBS + 1, f"logprobs must be in [0, {MAX_NUM_LOGPROBS}]"),
        ("logprobs", True, "logprobs must be an integer"),
        ("include_stop_str_in_output", None, "include_stop_str_in_output must be True or False"),
        ("skip_special_tokens", "yes", "skip_special_tokens must be True or False"),
    ],
)
def test_invalid_value_names_field_and_range(field, value, message):
    with pytest.raises(ValueError) as error:
        SamplingParams(**{field: value})
    assert message in str(error.value)


def test_min_tokens_must_not_exceed_max_tokens():
    with pytest.raises(ValueError, match=r"min_tokens must be <= max_tokens \(4\), got 5"):
        SamplingParams(min_tokens=5, max_tokens=4)


def test_clone_and_replace_give_independent_validated_copies():
    params = SamplingParams(n=3, seed=7, stop=["x"], stop_token_ids=[5], temperature=0.5)
    child = params.clone(n=1, seed=8)
    assert (child.n, child.seed, child.temperature) == (1, 8, 0.5)
    child.stop.append("y")
    child.stop_token_ids.append(6)
    assert params.stop == ["x"] and params.stop_token_ids == [5]
    with pytest.raises(ValueError, match="top_p"):
        params.clone(top_p=2.0)
    replaced = dataclasses.replace(params, n=1, max_tokens=3)  # what the engine core does
    assert replaced.n == 1 and replaced.max_tokens == 3 and replaced.stop == ["x"]


def test_does_not_import_torch():
    # load the file alone: the lodger.engine package itself may import torch
    import lodger.engine.sampling_params as module

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('sp', {module.__file__!r})\n"
        "module = sys.modules['sp'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "module.SamplingParams(temperature=0.5, stop='x')\n"
        "assert 'torch' not in sys.modules, 'sampling_params imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
