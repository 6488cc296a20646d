"""OpenAI request fields -> SamplingParams, with 400s that name the request's own field."""

from __future__ import annotations

from dataclasses import fields

from lodger.asgi.errors import bad_request, from_value_error
from lodger.asgi.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from lodger.engine.sampling_params import SamplingParams

# Fields a SamplingParams error may start with; the prompt checks of the engine add these.
KNOWN_FIELDS = {f.name for f in fields(SamplingParams)} | {"prompt", "prompt_token_ids"}


def completion_params(request: CompletionRequest) -> SamplingParams:
    if request.echo:
        raise bad_request("echo is not supported", param="echo", code="unsupported")
    if request.suffix is not None:
        raise bad_request("suffix is not supported", param="suffix", code="unsupported")
    if request.logit_bias:
        raise bad_request("logit_bias is not supported", param="logit_bias", code="unsupported")
    if request.best_of is not None and request.best_of != request.n:
        raise bad_request(
            f"best_of must equal n ({request.n}) or be left out, got {request.best_of}",
            param="best_of",
        )
    return _build(request, request.max_tokens, request.logprobs, renames={})


def chat_params(request: ChatCompletionRequest) -> SamplingParams:
    if request.tools:
        raise bad_request("tools are not supported", param="tools", code="unsupported")
    if request.top_logprobs is not None and not request.logprobs:
        raise bad_request("top_logprobs needs logprobs to be true", param="top_logprobs")
    logprobs = (request.top_logprobs or 0) if request.logprobs else None
    renames = {"logprobs": "top_logprobs"}
    max_tokens = request.max_completion_tokens
    if max_tokens is None:
        max_tokens = request.max_tokens
    else:
        renames["max_tokens"] = "max_completion_tokens"
    return _build(request, max_tokens, logprobs, renames)


def _build(
    request: SamplingFields, max_tokens: int | None, logprobs: int | None,
    renames: dict[str, str],
) -> SamplingParams:
    try:
        return SamplingParams(
            n=request.n,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=0 if request.top_k is None else request.top_k,
            min_p=0.0 if request.min_p is None else request.min_p,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            repetition_penalty=(
                1.0 if request.repetition_penalty is None else request.repetition_penalty
            ),
            seed=request.seed,
            stop=request.stop,
            stop_token_ids=request.stop_token_ids or [],
            ignore_eos=request.ignore_eos,
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            logprobs=logprobs,
            include_stop_str_in_output=request.include_stop_str_in_output,
            skip_special_tokens=request.skip_special_tokens,
        )
    except ValueError as exc:
        raise from_value_error(exc, KNOWN_FIELDS, renames) from None
