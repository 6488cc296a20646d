"""Tokenizer wrapper: loading, ids <-> text, EOS ids, token texts, chat templates, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lodger.engine.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(tokenizer_dir)


def copy_tokenizer(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for file in src.iterdir():
        if file.name not in skip:
            shutil.copy2(file, dst / file.name)
    return dst


def test_loads_ids_and_text(tokenizer):
    assert tokenizer.eos_token_id == 0  # <|endoftext|>
    assert tokenizer.stop_token_ids == []
    assert tokenizer.vocab_size == len(tokenizer) == 1000
    assert tokenizer.all_special_ids == {0, 1, 2}
    text = "Return a new list containing all items, 日本 🎉"
    ids = tokenizer.encode(text)
    assert ids == tokenizer.hf.encode(text) and len(ids) > 5
    assert tokenizer.decode(ids) == text
    marked = [1, *ids, 2]
    assert tokenizer.decode(marked) == text
    assert tokenizer.decode(marked, skip_special_tokens=False) == f"<|im_start|>{text}<|im_end|>"


def test_token_text_for_logprobs(tokenizer):
    assert tokenizer.token_text(1) == "<|im_start|>"
    ids = tokenizer.encode(" list")
    assert "".join(tokenizer.token_text(i) for i in ids) == " list"
    emoji_ids = tokenizer.encode("🎉")
    assert len(emoji_ids) > 1  # split across byte tokens
    assert tokenizer.token_text(emoji_ids[0]) == "\ufffd"
    assert tokenizer.token_text(1) is tokenizer.token_text(1)  # cached
    assert tokenizer.convert_ids_to_tokens([1]) == ["<|im_start|>"]


def test_generation_config_eos_list_adds_stop_ids(tokenizer_dir, tmp_path):
    path = copy_tokenizer(tokenizer_dir, tmp_path / "tok")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0, 2]}))
    tokenizer = Tokenizer.from_pretrained(path)
    assert tokenizer.eos_token_id == 0 and tokenizer.stop_token_ids == [2]
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ValueError, match="eos_token_id must be an int or a list of ints"):
        Tokenizer.from_pretrained(path)


def test_chat_template(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is heapq?"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is heapq?<|im_end|>\n"
    )
    assert tokenizer.chat_template
    assert tokenizer.apply_chat_template(messages) == expected + "<|im_start|>assistant\n"
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=False) == expected
    ids = tokenizer.encode(tokenizer.apply_chat_template(messages))
    assert ids[0] == 1 and ids.count(2) == 2  # the markers are single special tokens


def test_no_chat_template_is_a_clear_error(tokenizer_dir, tmp_path):
    path = copy_tokenizer(tokenizer_dir, tmp_path / "tok", skip=("chat_template.jinja",))
    assert "chat_template" not in json.loads((path / "tokenizer_config.json").read_text())
    tokenizer = Tokenizer.from_pretrained(path)
    assert tokenizer.chat_template is None
    with pytest.raises(ValueError, match="has no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_missing_or_broken_tokenizer_is_a_clear_error(tokenizer_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "weights_only"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="holds no tokenizer: expected one of tokenizer.json"):
        Tokenizer.from_pretrained(empty)
    broken = copy_tokenizer(tokenizer_dir, tmp_path / "broken")
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot load the tokenizer in"):
        Tokenizer.from_pretrained(broken)
