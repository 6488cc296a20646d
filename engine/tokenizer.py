"""Tokenizer: a thin wrapper over a local Hugging Face tokenizer (transformers AutoTokenizer).

Decoding goes straight to the `tokenizers` backend when there is one (half the Python
overhead of transformers' decode; no clean-up of spaces, so incremental and whole decodes
agree). Nothing is ever downloaded: the directory must hold the tokenizer files.
"""

from __future__ import annotations

import json
from pathlib import Path

# Any of these marks a directory that holds a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class Tokenizer:
    def __init__(self, hf_tokenizer, extra_eos_token_ids: list[int] | None = None, name: str = ""):
        """Wrap a loaded transformers tokenizer; `extra_eos_token_ids` are further ids that end
        generation like EOS (e.g. generation_config.json's eos_token_id list)."""
        self.hf = hf_tokenizer
        self.name = name  # where it was loaded from, for error messages
        # Decodes ids -> text without transformers' Python layers; None for slow tokenizers.
        self._backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        extra = list(extra_eos_token_ids or [])
        # The id that ends generation (unless ignore_eos); None when the tokenizer has none.
        self.eos_token_id: int | None = hf_tokenizer.eos_token_id
        if self.eos_token_id is None and extra:
            self.eos_token_id = extra[0]
        # Further ids that end generation like EOS, without the EOS itself.
        self.stop_token_ids: list[int] = [i for i in dict.fromkeys(extra) if i != self.eos_token_id]
        # Number of ids the tokenizer knows, added tokens included.
        self.vocab_size: int = len(hf_tokenizer)
        self.all_special_ids: frozenset[int] = frozenset(hf_tokenizer.all_special_ids)
        self._token_texts: dict[int, str] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        """Load the tokenizer of a local checkpoint directory (never downloads)."""
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer directory {str(path)!r} does not exist")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ValueError(
                f"{str(path)!r} holds no tokenizer: expected one of {', '.join(TOKENIZER_FILES)}"
            )
        try:
            hf_tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot load the tokenizer in {str(path)!r}: {error}") from error
        return cls(hf_tokenizer, _generation_config_eos_ids(path), name=str(path))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, with the tokenizer's own special tokens (e.g. BOS) added."""
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of `token_ids`; incomplete UTF-8 at the end decodes to U+FFFD."""
        if self._backend is not None:
            return self._backend.decode(token_ids, skip_special_tokens=skip_special_tokens)
        return self.hf.decode(
            token_ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def token_text(self, token_id: int) -> str:
        """The text of one token on its own (special tokens included), as logprobs show it;
        cached. A token holding part of a UTF-8 character reads as U+FFFD."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self.decode([token_id], skip_special_tokens=False)
            self._token_texts[token_id] = text
        return text

    def convert_ids_to_tokens(self, token_ids: list[int]) -> list[str]:
        """The vocabulary's raw token strings (e.g. byte-level 'Ġthe')."""
        return self.hf.convert_ids_to_tokens(token_ids)

    @property
    def chat_template(self) -> str | None:
        return self.hf.chat_template

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, **template_kwargs
    ) -> str:
        """The prompt text for a conversation (list of {"role", "content"} dicts).

        `template_kwargs` go to the template (e.g. tools=...). Encode the result with
        add_special_tokens=False when the template writes the BOS itself.
        """
        if not self.hf.chat_template:
            raise ValueError(
                f"the tokenizer in {self.name or 'this model'!r} has no chat template "
                "(chat_template in tokenizer_config.json or chat_template.jinja): use a "
                "completion prompt instead of chat messages"
            )
        return self.hf.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )

    def __len__(self) -> int:
        return self.vocab_size


def _generation_config_eos_ids(path: Path) -> list[int]:
    """eos_token_id of generation_config.json (an int or a list), [] when absent."""
    file = path / "generation_config.json"
    if not file.is_file():
        return []
    try:
        eos = json.loads(file.read_text()).get("eos_token_id")
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {str(file)!r}: {error}") from error
    if eos is None:
        return []
    ids = eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{str(file)!r}: eos_token_id must be an int or a list of ints")
    return ids
