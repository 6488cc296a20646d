"""The SDK's sampling keywords -> OpenAI request bodies (both clients build the same body)."""

from __future__ import annotations

from typing import Any

# OpenAI's own parameters; the openai library takes them as keywords.
OPENAI_PARAMS = frozenset({"max_tokens", "temperature", "top_p", "n", "stop", "seed",
                           "presence_penalty", "frequency_penalty"})
# vLLM's extras; the remote client sends them in `extra_body`.
VLLM_EXTRAS = frozenset({"top_k", "min_p", "repetition_penalty", "ignore_eos", "min_tokens",
                         "stop_token_ids", "include_stop_str_in_output",
                         "skip_special_tokens"})
# logprobs=k: the sampled token's logprob and the top k of each position (chat included).
SAMPLING_KEYS = OPENAI_PARAMS | VLLM_EXTRAS | {"logprobs"}


def check_sampling(sampling: dict[str, Any]) -> None:
    unknown = sorted(set(sampling) - SAMPLING_KEYS)
    if unknown:
        raise TypeError(
            f"unknown sampling option(s) {unknown}; allowed: {sorted(SAMPLING_KEYS)}"
        )


def completion_body(model: str, prompt: str | list[int], sampling: dict[str, Any],
                    stream: bool, return_token_ids: bool) -> dict[str, Any]:
    check_sampling(sampling)
    body: dict[str, Any] = {"model": model, "prompt": prompt, **sampling}
    return _finish(body, stream, return_token_ids)


def chat_body(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any],
              stream: bool, return_token_ids: bool) -> dict[str, Any]:
    check_sampling(sampling)
    body: dict[str, Any] = {"model": model, "messages": messages, **sampling}
    if "max_tokens" in body:
        body["max_completion_tokens"] = body.pop("max_tokens")
    if body.get("logprobs") is not None:
        body["top_logprobs"] = body.pop("logprobs")
        body["logprobs"] = True
    else:
        body.pop("logprobs", None)
    return _finish(body, stream, return_token_ids)


def _finish(body: dict[str, Any], stream: bool, return_token_ids: bool) -> dict[str, Any]:
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if return_token_ids:
        body["return_token_ids"] = True
    return body


def split_extras(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the openai library's keywords, extra_body) of a request body."""
    extra_keys = VLLM_EXTRAS | {"return_token_ids"}
    return (
        {k: v for k, v in body.items() if k not in extra_keys},
        {k: v for k, v in body.items() if k in extra_keys},
    )
