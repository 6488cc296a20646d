"""OpenAI-shaped bodies (as dicts) -> SDK types. Both clients go through these, the
in-process one from the app's own response models, the remote one from the openai
library's, so both return exactly the same values."""

from __future__ import annotations

from typing import Any

from lodger.sdk.types import Choice, Delta, Generation, TokenLogprob, TopLogprob, Usage


def _usage(body: dict[str, Any]) -> Usage | None:
    usage = body.get("usage")
    if not usage:
        return None
    return Usage(
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        total_tokens=usage["total_tokens"],
    )


def _completion_logprobs(logprobs: dict[str, Any] | None) -> list[TokenLogprob] | None:
    """Legacy completions shape: parallel lists, top_logprobs as {token: logprob} dicts."""
    if not logprobs:
        return None
    tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
    return [
        TokenLogprob(
            token=token,
            logprob=logprob,
            top_logprobs=[TopLogprob(token=t, logprob=lp) for t, lp in (top or {}).items()],
        )
        for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], tops,
                                       strict=True)
    ]


def _chat_logprobs(logprobs: dict[str, Any] | None) -> list[TokenLogprob] | None:
    if not logprobs or logprobs.get("content") is None:
        return None
    return [
        TokenLogprob(
            token=entry["token"],
            logprob=entry["logprob"],
            top_logprobs=[
                TopLogprob(token=top["token"], logprob=top["logprob"])
                for top in entry.get("top_logprobs") or []
            ],
        )
        for entry in logprobs["content"]
    ]


def _first_prompt_ids(body: dict[str, Any]) -> list[int] | None:
    ids = body.get("prompt_token_ids")
    if ids and isinstance(ids[0], list):  # completions: one list per prompt
        return ids[0]
    return ids


def completion(body: dict[str, Any]) -> Generation:
    return _generation(body, lambda c: c["text"], lambda c: _completion_logprobs(c.get("logprobs")))


def chat_completion(body: dict[str, Any]) -> Generation:
    return _generation(
        body,
        lambda c: (c.get("message") or {}).get("content") or "",
        lambda c: _chat_logprobs(c.get("logprobs")),
    )


def _generation(body: dict[str, Any], text_of, logprobs_of) -> Generation:
    """A Generation from a completions or chat body; the two differ in where each choice
    keeps its text and in the shape of its logprobs."""
    return Generation(
        id=body["id"],
        model=body["model"],
        choices=[
            Choice(
                index=c["index"],
                text=text_of(c),
                token_ids=c.get("token_ids"),
                finish_reason=c.get("finish_reason"),
                stop_reason=c.get("stop_reason"),
                logprobs=logprobs_of(c),
            )
            for c in body["choices"]
        ],
        usage=_usage(body),
        prompt_token_ids=_first_prompt_ids(body),
    )


def completion_chunk(body: dict[str, Any]) -> tuple[list[Delta], Usage | None]:
    deltas = [
        Delta(
            index=c["index"],
            text=c.get("text") or "",
            token_ids=c.get("token_ids"),
            finish_reason=c.get("finish_reason"),
            stop_reason=c.get("stop_reason"),
            logprobs=_completion_logprobs(c.get("logprobs")),
        )
        for c in body.get("choices") or []
    ]
    return deltas, _usage(body)


def chat_chunk(body: dict[str, Any]) -> tuple[list[Delta], Usage | None]:
    """Content deltas; a choice's role-only opening chunk carries nothing and is skipped."""
    deltas = []
    for c in body.get("choices") or []:
        text = (c.get("delta") or {}).get("content") or ""
        logprobs = _chat_logprobs(c.get("logprobs"))
        token_ids = c.get("token_ids")
        if not (text or logprobs or token_ids or c.get("finish_reason")):
            continue
        deltas.append(
            Delta(
                index=c["index"],
                text=text,
                token_ids=token_ids,
                finish_reason=c.get("finish_reason"),
                stop_reason=c.get("stop_reason"),
                logprobs=logprobs,
            )
        )
    return deltas, _usage(body)
