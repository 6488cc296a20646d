"""Tiny random-weight checkpoints and a tiny tokenizer, built offline for the tests.

Nothing is downloaded: the tokenizer is a byte-level BPE trained with the `tokenizers`
library on stdlib docstrings and source, and the checkpoints are built with transformers'
own model classes (`AutoModelForCausalLM.from_config`) and saved as safetensors, so our
loader reads exactly what a real Hugging Face checkpoint directory holds.
"""

from __future__ import annotations

import importlib
import inspect
import shutil
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END]
VOCAB_SIZE = 1000

# ChatML: <|im_start|>role\ncontent<|im_end|>\n ... then the assistant header on request.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Modules whose docstrings (English) and source (Python) make the training corpus.
_DOC_MODULES = ["collections", "json", "itertools", "functools", "pathlib", "string", "heapq"]
_SOURCE_MODULES = ["textwrap", "heapq", "bisect"]

# A tiny model: hidden 64, 4 query heads, 2 KV heads (GQA), 2 layers, MLP 128.
_BASE_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.15,  # large enough that a random model does not repeat one token
    rms_norm_eps=1e-6,
)

# Per-family differences: rope variants, qkv bias, q/k norm, tied embeddings, head_dim.
_FAMILY_CONFIG = {
    "llama": dict(
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ),
    "mistral": dict(rope_theta=10000.0, sliding_window=None, head_dim=16),
    "qwen2": dict(rope_theta=1000000.0, num_hidden_layers=3),
    "qwen3": dict(rope_theta=1000000.0, head_dim=32, tie_word_embeddings=True),
}
FAMILIES = tuple(_FAMILY_CONFIG)


def _corpus() -> list[str]:
    """Docstrings and source of a few stdlib modules, split into paragraphs."""
    texts: list[str] = []
    for name in _DOC_MODULES:
        module = importlib.import_module(name)
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc:
                texts.extend(p for p in doc.split("\n\n") if p.strip())
    for name in _SOURCE_MODULES:
        source = inspect.getsource(importlib.import_module(name))
        texts.extend(p for p in source.split("\n\n") if p.strip())
    assert texts, "empty tokenizer corpus"
    return texts


def train_tokenizer(path: str | Path) -> Path:
    """Train a ~1000-token byte-level BPE and save it as a transformers tokenizer at `path`.

    Special tokens: `<|endoftext|>` (id 0, the eos), `<|im_start|>` (1), `<|im_end|>` (2).
    The saved tokenizer has a ChatML chat template, so `apply_chat_template` works.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHAT_TEMPLATE
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    return path


def _copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for file in src.iterdir():
        if file.is_file() and file.name != "config.json":
            shutil.copy2(file, dst / file.name)


def build_config(family: str, vocab_size: int, eos_token_id: int, **config_overrides):
    """The transformers config of a tiny model of `family` (llama, mistral, qwen2, qwen3)."""
    from transformers import AutoConfig

    if family not in _FAMILY_CONFIG:
        raise ValueError(f"family {family!r} is not one of {sorted(_FAMILY_CONFIG)}")
    kwargs = {**_BASE_CONFIG, **_FAMILY_CONFIG[family], **config_overrides}
    kwargs.setdefault("tie_word_embeddings", False)
    if family == "qwen2":
        kwargs.setdefault("use_sliding_window", False)
    return AutoConfig.for_model(
        family,
        vocab_size=vocab_size,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        pad_token_id=eos_token_id,
        **kwargs,
    )


def build_checkpoint(
    family: str,
    path: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    seed: int = 0,
    max_shard_size: str | None = None,
    **config_overrides,
) -> Path:
    """Save a random-weight float32 `family` model plus its tokenizer as a HF directory.

    tokenizer_dir: copy this tokenizer instead of training a new one.
    seed: the weights' RNG seed (the same seed gives the same weights).
    max_shard_size: e.g. "200KB" to save a sharded checkpoint with an index file.
    config_overrides: transformers config fields (e.g. rope_scaling, tie_word_embeddings).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if tokenizer_dir is None:
        train_tokenizer(path)
    else:
        _copy_tokenizer(Path(tokenizer_dir), path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = build_config(family, len(tokenizer), tokenizer.eos_token_id, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    return path
