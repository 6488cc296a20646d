"""The engine's per-position logprobs -> OpenAI's completions and chat logprob shapes."""

from __future__ import annotations

from collections.abc import Callable

from lodger.asgi.protocol_responses import (
    ChatChoiceLogprobs,
    ChatTokenLogprob,
    ChatTopLogprob,
    CompletionLogprobs,
)
from lodger.engine.outputs import Logprob, SampleLogprobs

TokenText = Callable[[int], str]  # token id -> its text, when the engine left it empty


def _text(token_id: int, logprob: Logprob, token_text: TokenText) -> str:
    return logprob.decoded_token if logprob.decoded_token is not None else token_text(token_id)


def top_k(position: SampleLogprobs, k: int) -> list[tuple[int, Logprob]]:
    """The k most likely tokens of a position, most likely first.

    The engine puts the sampled token first and then the top k; the sampled one belongs
    to the top k only when its rank says so."""
    entries = list(position.items())
    if all(lp.rank is not None for _, lp in entries):
        return sorted(entries, key=lambda e: e[1].rank)[:k]
    return entries[1 : k + 1]


def sampled(token_id: int, position: SampleLogprobs) -> Logprob:
    assert token_id in position, "the sampled token must be among its position's logprobs"
    return position[token_id]


class CompletionLogprobsBuilder:
    """Accumulates one choice's logprobs; `text_offset` continues across stream chunks."""

    def __init__(self, k: int, token_text: TokenText):
        self.k = k
        self.token_text = token_text
        self.offset = 0  # characters of text produced so far by this choice's tokens

    def build(self, token_ids: list[int], positions: list[SampleLogprobs]) -> CompletionLogprobs:
        out = CompletionLogprobs(text_offset=[], token_logprobs=[], tokens=[], top_logprobs=[])
        for token_id, position in zip(token_ids, positions, strict=True):
            chosen = sampled(token_id, position)
            text = _text(token_id, chosen, self.token_text)
            out.text_offset.append(self.offset)
            out.tokens.append(text)
            out.token_logprobs.append(chosen.logprob)
            out.top_logprobs.append(
                {_text(t, lp, self.token_text): lp.logprob for t, lp in top_k(position, self.k)}
            )
            self.offset += len(text)
        return out


def chat_logprobs(
    token_ids: list[int], positions: list[SampleLogprobs], k: int, token_text: TokenText
) -> ChatChoiceLogprobs:
    content = []
    for token_id, position in zip(token_ids, positions, strict=True):
        chosen = sampled(token_id, position)
        text = _text(token_id, chosen, token_text)
        tops = [
            ChatTopLogprob(token=t_text, logprob=lp.logprob, bytes=list(t_text.encode()))
            for t_text, lp in ((_text(t, lp, token_text), lp) for t, lp in top_k(position, k))
        ]
        content.append(
            ChatTokenLogprob(token=text, logprob=chosen.logprob, bytes=list(text.encode()),
                             top_logprobs=tops)
        )
    return ChatChoiceLogprobs(content=content)


def merge_completion_logprobs(parts: list[CompletionLogprobs]) -> CompletionLogprobs | None:
    if not parts:
        return None
    merged = CompletionLogprobs(text_offset=[], token_logprobs=[], tokens=[], top_logprobs=[])
    for part in parts:
        merged.text_offset += part.text_offset
        merged.token_logprobs += part.token_logprobs
        merged.tokens += part.tokens
        merged.top_logprobs += part.top_logprobs
    return merged
