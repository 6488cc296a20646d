"""A tokenizer with exactly the vocabulary size of a benchmark shape, built in a second.

Benchmark prompts are random token ids, and a random-weight model emits ids from its whole
vocabulary (151,936 for Qwen3), so the tokenizer must decode every id to some text, as a
real one does: otherwise detokenization would cost nothing and streaming servers would have
nothing to send. This is a byte-level BPE like Qwen's and Llama 3's: ids 0-2 are special
tokens, then the 256 byte symbols, then made-up words (" ab", " ac", ..., every third without
the leading space). It has no merges, so encoding text gives one token per byte; the
benchmarks never encode text.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
LETTERS = string.ascii_lowercase
SPACE = "\u0120"  # how the byte-level alphabet writes " "


def _word(index: int) -> str:
    """The index-th made-up word: base-26 letters (at least 2), usually after a space."""
    letters = ""
    n = index
    while True:
        n, digit = divmod(n, len(LETTERS))
        letters = LETTERS[digit] + letters
        if n == 0 and len(letters) >= 2:
            break
    return letters if index % 3 == 2 else SPACE + letters


def build_vocab(vocab_size: int) -> dict[str, int]:
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    assert len(alphabet) == 256
    tokens = SPECIAL_TOKENS + alphabet
    if vocab_size < len(tokens):
        raise ValueError(f"vocab_size must be at least {len(tokens)}, got {vocab_size}")
    tokens += [_word(i) for i in range(vocab_size - len(tokens))]
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    assert len(vocab) == vocab_size, "made-up words must be distinct"
    return vocab


def save_bench_tokenizer(path: Path, vocab_size: int) -> None:
    """Write tokenizer.json and tokenizer_config.json (eos `<|endoftext|>` = id 0) to path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(vocab=build_vocab(vocab_size), merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=SPECIAL_TOKENS[0],
                                   pad_token=SPECIAL_TOKENS[0],
                                   extra_special_tokens=SPECIAL_TOKENS[1:])
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    # the field names transformers 4.x and 5.x both read
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["additional_special_tokens"] = config.pop("extra_special_tokens", SPECIAL_TOKENS[1:])
    config_path.write_text(json.dumps(config, indent=2) + "\n")
