"""Incremental detokenizer on a byte-level BPE: deltas add up to the whole decode, no broken
UTF-8, stop strings across token boundaries, small decode windows."""

from __future__ import annotations

import random

import pytest

from lodger.engine.detokenizer import IncrementalDetokenizer
from lodger.engine.tokenizer import Tokenizer

TEXTS = [
    "Return a new list containing all items from the iterable in ascending order.",
    "日本語のテキスト、中文字符 and café naïve — ünïcödé",
    "emoji 🎉🎊 family 👨‍👩‍👧 thumbs 👍🏽 flags 🇯🇵 end",
    "def f(x):\n    return {'key': x}  # ok\n\n",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√ ½ ⅞ 한국어 ελληνικά",
]
REPLACEMENT = "\ufffd"


class CountingTokenizer:
    """Passes decode through and records the longest id list it was asked to decode."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.longest_decode = 0

    def decode(self, token_ids, skip_special_tokens=True):
        self.longest_decode = max(self.longest_decode, len(token_ids))
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(tokenizer_dir)


def stream(detokenizer, token_ids, rng=None, finish=True) -> tuple[list[str], str | None]:
    """Feed ids in chunks of 1 (or 1..3 with rng); returns the deltas and the stop found."""
    deltas, stop_found, index = [], None, 0
    while index < len(token_ids):
        size = 1 if rng is None else rng.randint(1, 3)
        delta, stop = detokenizer.add(token_ids[index : index + size])
        deltas.append(delta)
        if stop is not None:
            assert stop_found is None, "a second stop string was reported"
            stop_found = stop
        index += size
    if finish:
        delta, stop = detokenizer.add([], finished=True)
        deltas.append(delta)
        stop_found = stop_found or stop
    return deltas, stop_found


def test_valid_text_streams_without_broken_characters(tokenizer):
    prompt = tokenizer.encode("Say something:")
    for text in TEXTS:
        ids = tokenizer.encode(text)
        detokenizer = IncrementalDetokenizer(tokenizer, prompt)
        emitted = ""
        for end in range(1, len(ids) + 1):
            delta, stop = detokenizer.add([ids[end - 1]])
            assert REPLACEMENT not in delta and stop is None
            emitted += delta
            so_far = tokenizer.decode(ids[:end])
            assert so_far.startswith(emitted)
            if not so_far.endswith(REPLACEMENT):  # nothing is held without a reason
                assert emitted == so_far
        assert emitted == text
        assert detokenizer.add([], finished=True) == ("", None)


def test_deltas_add_up_to_decode_on_random_sequences(tokenizer):
    """Random ids (special tokens, lone bytes, pieces of multi-byte text) in random chunks:
    the deltas plus the final flush equal one decode of the whole output."""
    rng = random.Random(0)
    pieces = [tokenizer.encode(text) for text in TEXTS]
    for trial in range(150):
        ids: list[int] = []
        while len(ids) < rng.randint(1, 60):
            if rng.random() < 0.5:
                ids.append(rng.randrange(tokenizer.vocab_size))
            else:
                piece = rng.choice(pieces)
                start = rng.randrange(len(piece))
                ids.extend(piece[start : start + rng.randint(1, 8)])
        prompt = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(1, 8))]
        for skip in (True, False):
            detokenizer = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip)
            deltas, _ = stream(detokenizer, ids, rng)
            expected = tokenizer.decode(ids, skip_special_tokens=skip)
            assert "".join(deltas) == expected, f"trial {trial}, skip {skip}"


def test_unfinished_character_is_flushed_at_the_end(tokenizer):
    ids = tokenizer.encode("ok 🎉")[:-1]  # the emoji's last byte never comes
    detokenizer = IncrementalDetokenizer(tokenizer, [5])
    deltas, _ = stream(detokenizer, ids, finish=False)
    assert "".join(deltas) in ("ok", "ok ") and REPLACEMENT not in "".join(deltas)
    flushed, stop = detokenizer.add([], finished=True)
    assert flushed.endswith(REPLACEMENT) and stop is None
    assert "".join(deltas) + flushed == tokenizer.decode(ids)


def test_special_tokens_kept_or_skipped(tokenizer):
    ids = [*tokenizer.encode("Hi there"), 2, *tokenizer.encode("\nnext"), 0]
    kept, _ = stream(IncrementalDetokenizer(tokenizer, [1], skip_special_tokens=False), ids)
    assert "".join(kept) == "Hi there<|im_end|>\nnext<|endoftext|>"
    skipped, _ = stream(IncrementalDetokenizer(tokenizer, [1], skip_special_tokens=True), ids)
    assert "".join(skipped) == "Hi there\nnext"


def test_decode_window_stays_small(tokenizer):
    """Per-token work does not grow with the output: the decoded window stays a few tokens."""
    counting = CountingTokenizer(tokenizer)
    ids = tokenizer.encode(" ".join(TEXTS) * 4)
    assert len(ids) > 400
    detokenizer = IncrementalDetokenizer(counting, tokenizer.encode("prompt " * 50))
    deltas, _ = stream(detokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids)
    assert counting.longest_decode <= 12


def metaspace_tokenizer() -> Tokenizer:
    """A SentencePiece-style BPE whose decoder drops the first token's leading space."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], show_progress=False)
    raw.train_from_iterator(["The json module encodes and decodes objects"] * 4, trainer=trainer)
    return Tokenizer(PreTrainedTokenizerFast(tokenizer_object=raw))


def test_first_token_is_decoded_in_prompt_context():
    tokenizer = metaspace_tokenizer()
    ids = tokenizer.encode("The json module encodes")
    prompt, output = ids[:2], ids[2:]
    assert tokenizer.decode(output) == "module encodes"  # out of context: the space is lost
    deltas, _ = stream(IncrementalDetokenizer(tokenizer, prompt), output)
    assert "".join(deltas) == " module encodes"


# ---- stop strings ----------------------------------------------------------------------------


def run_with_stops(tokenizer, text, stop, include=False, rng=None):
    detokenizer = IncrementalDetokenizer(
        tokenizer, [1], stop=stop, include_stop_str_in_output=include
    )
    deltas, found = stream(detokenizer, tokenizer.encode(text), rng)
    return "".join(deltas), found, detokenizer


def test_stop_string_across_tokens_is_trimmed(tokenizer):
    text = "The json module. Stop here: the end."
    stop_ids = tokenizer.encode("Stop here")
    assert len(stop_ids) > 1, "the stop string should span several tokens"
    output, found, detokenizer = run_with_stops(tokenizer, text, ["Stop here"])
    assert (output, found) == ("The json module. ", "Stop here")
    assert detokenizer.stop_str == "Stop here"
    assert detokenizer.add(tokenizer.encode(" more")) == ("", None)  # nothing after a stop
    output, found, _ = run_with_stops(tokenizer, text, ["Stop here"], include=True)
    assert (output, found) == ("The json module. Stop here", "Stop here")


def test_first_completed_stop_wins_and_stops_may_end_inside_a_token(tokenizer):
    output, found, _ = run_with_stops(tokenizer, "The json module", ["module", "json"])
    assert (output, found) == ("The ", "json")
    detokenizer = IncrementalDetokenizer(tokenizer, [1], stop=["json mod", "so"])
    assert detokenizer.add(tokenizer.encode("The json module")) == ("The j", "so")
    detokenizer = IncrementalDetokenizer(tokenizer, [1], stop=["son", "json"])  # same end
    assert detokenizer.add(tokenizer.encode("The json module")) == ("The ", "json")
    output, found, _ = run_with_stops(tokenizer, "The json module", ["so"], include=True)
    assert (output, found) == ("The jso", "so")
    output, found, _ = run_with_stops(tokenizer, "日本語のテキスト", ["語の"])
    assert (output, found) == ("日本", "語の")


def test_text_that_may_start_a_stop_is_held_then_released(tokenizer):
    text = "abc\n\nxyz\n"
    detokenizer = IncrementalDetokenizer(tokenizer, [1], stop=["\n\nEnd"])
    deltas, found = stream(detokenizer, tokenizer.encode(text), finish=False)
    assert "".join(deltas) == "abc\n\nxyz" and found is None  # the last "\n" may start a stop
    assert detokenizer.add([], finished=True) == ("\n", None)
    output, found, _ = run_with_stops(tokenizer, text, ["\n\nEnd"], include=True)
    assert (output, found) == (text, None)


def test_stops_on_random_texts_match_a_plain_search(tokenizer):
    rng = random.Random(1)
    for trial in range(120):
        text = rng.choice(TEXTS) + rng.choice(TEXTS)
        stops = []
        for _ in range(rng.randint(1, 3)):
            start = rng.randrange(len(text))
            stops.append(text[start : start + rng.randint(1, 6)])
        if rng.random() < 0.3:
            stops.append("never in the text ✗")
        include = rng.random() < 0.5
        # generation ends where the first stop string completes (the longer on a tie)
        hits = [(text.find(s) + len(s), text.find(s), s) for s in stops if s in text]
        _, start, stop = min(hits)
        expected = text[: start + len(stop)] if include else text[:start]
        output, found, _ = run_with_stops(tokenizer, text, stops, include, rng)
        assert (output, found) == (expected, stop), f"trial {trial}: {stops!r}"
