"""Session-wide fixtures: a tiny tokenizer and tiny random-weight checkpoints.

Each directory is built once per test session under pytest's tmp_path_factory, so
nothing is downloaded. Import helpers with `from checkpoints import build_checkpoint`.

Torch runs single-threaded in tests (LODGER_TEST_THREADS overrides): the tiny models gain
nothing from threads, and on a busy machine spinning OpenMP threads made the suite ~2x
slower.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(int(os.environ.get("LODGER_TEST_THREADS", "1")))

from checkpoints import FAMILIES, build_checkpoint, train_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A trained byte-level BPE tokenizer (vocab 1000, ChatML template, eos <|endoftext|>)."""
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _checkpoint(family: str, tmp_path_factory, tokenizer_dir: Path) -> Path:
    path = tmp_path_factory.mktemp(f"{family}_checkpoint")
    return build_checkpoint(family, path, tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """Llama with Llama-3 rope scaling (rope_type llama3), GQA 4/2 heads, 2 layers."""
    return _checkpoint("llama", tmp_path_factory, tokenizer_dir)


@pytest.fixture(scope="session")
def mistral_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """Mistral (no sliding window), default rope."""
    return _checkpoint("mistral", tmp_path_factory, tokenizer_dir)


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """Qwen2 with q/k/v bias, 3 layers."""
    return _checkpoint("qwen2", tmp_path_factory, tokenizer_dir)


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """Qwen3 with per-head q/k RMSNorm, head_dim 32 != hidden/heads, tied embeddings."""
    return _checkpoint("qwen3", tmp_path_factory, tokenizer_dir)


@pytest.fixture(scope="session", params=FAMILIES)
def model_dir(request) -> Path:
    """Each of the four families in turn (llama, mistral, qwen2, qwen3)."""
    return request.getfixturevalue(f"{request.param}_dir")
