"""Incremental detokenization of one output sequence, with stop strings.

Text is decoded from a small window of recent tokens, never the whole output: the window
starts at `prefix_offset`, and the text of tokens [prefix_offset, read_offset) was already
emitted, so the new text is what decoding the whole window adds to decoding its emitted
part. Starting the window a few tokens back (and, at first, inside the prompt) keeps
context-dependent decoders right (e.g. SentencePiece dropping the first token's leading
space). Text ending in U+FFFD (a UTF-8 character split across tokens) is held back until
the character completes.
"""

from __future__ import annotations

from collections.abc import Sequence

from lodger.engine.tokenizer import Tokenizer

# Prompt tokens decoded as context before the first output token.
NUM_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: Sequence[int],
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = list(stop)
        assert all(self.stop), "stop strings must not be empty"
        self.include_stop_str_in_output = include_stop_str_in_output
        # The stop string that ended the text; nothing is emitted after it.
        self.stop_str: str | None = None
        # The decode window: token ids from prefix_offset on (older ids are dropped).
        self._window: list[int] = list(prompt_token_ids[-NUM_CONTEXT_TOKENS:])
        self._read_offset = len(self._window)  # window ids before it were emitted as text
        self._max_stop_len = max((len(s) for s in self.stop), default=0)
        self._held = ""  # decoded text kept back because it may begin a stop string
        self._tail = ""  # last max_stop_len - 1 emitted characters, to find stops across steps

    def add(self, new_token_ids: Sequence[int], finished: bool = False) -> tuple[str, str | None]:
        """Feed new output tokens; returns (text delta, the stop string found or None).

        finished=True (the request ends with these tokens; `add([], finished=True)` to only
        flush) also emits the text held back, so the deltas add up to the whole output's
        decode. Once a stop string was found, nothing more is emitted.
        """
        if self.stop_str is not None:
            return "", None
        text = self._decode_new(new_token_ids, finished)
        if not self.stop:
            return text, None
        return self._cut_at_stop(text, finished)

    def _decode_new(self, new_token_ids: Sequence[int], finished: bool) -> str:
        window = self._window
        window.extend(new_token_ids)
        if self._read_offset == len(window):
            return ""
        emitted_text = self._decode(window[: self._read_offset])
        window_text = self._decode(window)
        if not finished and window_text.endswith(REPLACEMENT_CHAR):
            return ""  # a character is still incomplete: wait for its next bytes
        if len(window_text) <= len(emitted_text):
            return ""  # e.g. only skipped special tokens so far
        # the text of window[read_offset:] becomes the emitted part of the next window
        del window[: self._read_offset]
        self._read_offset = len(window)
        return window_text[len(emitted_text) :]

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens)

    def _cut_at_stop(self, text: str, finished: bool) -> tuple[str, str | None]:
        pending = self._held + text
        searched = self._tail + pending
        start, stop_str = self._first_stop(searched)
        if stop_str is not None:
            end = start + len(stop_str) if self.include_stop_str_in_output else start
            assert end >= len(self._tail), "a stop string began in already emitted text"
            self.stop_str = stop_str
            self._held = ""
            return searched[len(self._tail) : end], stop_str
        num_held = 0
        if not (finished or self.include_stop_str_in_output):
            num_held = self._stop_prefix_len(pending)
        emitted = pending[: len(pending) - num_held]
        self._held = pending[len(pending) - num_held :]
        if self._max_stop_len > 1:
            self._tail = (self._tail + emitted)[-(self._max_stop_len - 1) :]
        return emitted, None

    def _first_stop(self, text: str) -> tuple[int, str | None]:
        """(start, stop string) of the stop that completes first in `text`, as if the text
        came one character at a time; on a tie (same end) the longer one."""
        best_end, best_start, best = len(text) + 1, 0, None
        for stop_str in self.stop:
            start = text.find(stop_str)
            end = start + len(stop_str)
            if start >= 0 and (end, start) < (best_end, best_start):
                best_end, best_start, best = end, start, stop_str
        return best_start, best

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string (0 if none)."""
        longest = 0
        for stop_str in self.stop:
            for length in range(min(len(stop_str) - 1, len(text)), longest, -1):
                if text.endswith(stop_str[:length]):
                    longest = length
                    break
        return longest
