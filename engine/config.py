"""EngineConfig: everything the engine needs to know before it loads a model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from typing import Any

DTYPES = ("auto", "bfloat16", "float16", "float32")
DEVICES = ("auto", "cuda", "cpu")


@dataclass(slots=True)
class EngineConfig:
    # Path to a local HF checkpoint dir (config.json, *.safetensors, tokenizer files).
    model: str
    # Weight and activation dtype; "auto" = the checkpoint's on CUDA, float32 on CPU.
    dtype: str = "auto"
    # "auto" = cuda when available, else cpu.
    device: str = "auto"
    # Longest prompt + output in tokens; None = the model's max_position_embeddings.
    max_model_len: int | None = None
    # Tokens per KV block.
    block_size: int = 16
    # Share of the card's memory the engine may use (weights + activations + KV cache).
    gpu_memory_utilization: float = 0.9
    # Number of KV blocks; None = sized by profiling (CUDA) or a memory share (CPU).
    num_kv_blocks: int | None = None
    # Most requests in one step.
    max_num_seqs: int = 256
    # Token budget of one step (prefill chunks + decodes).
    max_num_batched_tokens: int = 8192
    # Share full KV blocks between requests with the same prefix.
    enable_prefix_caching: bool = True
    # Turn CUDA graphs off (on CUDA, decode steps of up to 512 requests and steps with
    # prompt tokens of up to 512 tokens replay graphs, and larger prompt steps where timing
    # at start finds a graph faster: engine/prompt_graph_sizes.py; the rest run eagerly).
    enforce_eager: bool = False
    # Schedule and launch each step before the previous one's sampled tokens reach the host,
    # so the host's work between steps overlaps the device's (see EngineCore.step). Steps
    # with a repetition/presence/frequency penalty in flight wait for it regardless.
    async_scheduling: bool = True
    # CUDA: at start-up, time cuBLAS against lodger's Triton matmul for each weight shape
    # at each decode batch size up to 256 and use the faster (lodger.kernels.linear_tuning;
    # small-batch decode gains most, docs/benchmarks.md). The choices are kept in a file
    # (lodger.kernels.tuning_cache), so only the first start on a card pays the timing and
    # the Triton compiles of every candidate (ModelRunner.matmul_tuning_s; 10-40 s).
    # 16-bit weights only (float32 keeps cuBLAS). False: cuBLAS everywhere, nothing timed.
    tune_matmuls: bool = True
    # Seed of the engine's own random state (unseeded sampling).
    seed: int = 0

    def __post_init__(self) -> None:
        self.model = os.fspath(self.model)
        if not os.path.isdir(self.model):
            raise ValueError(f"model must be a local checkpoint directory, got {self.model!r}")
        if not os.path.isfile(os.path.join(self.model, "config.json")):
            raise ValueError(f"model directory {self.model!r} has no config.json")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        _check_positive("block_size", self.block_size)
        _check_positive("max_num_seqs", self.max_num_seqs)
        _check_positive("max_num_batched_tokens", self.max_num_batched_tokens)
        if self.max_model_len is not None:
            _check_positive("max_model_len", self.max_model_len)
        if self.num_kv_blocks is not None:
            _check_positive("num_kv_blocks", self.num_kv_blocks)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("device='cuda' was asked for but torch sees no CUDA device")

    @classmethod
    def from_kwargs(cls, model: str, **kwargs: Any) -> EngineConfig:
        """Build a config from keyword arguments, naming any that are not config fields."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown engine option(s) {unknown}; allowed: {sorted(known)}")
        return cls(model=model, **kwargs)

    @property
    def torch_device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def torch_dtype(self):
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        if self.torch_device.type == "cpu":
            return torch.float32
        name = checkpoint_dtype_name(self.model)
        return torch.float16 if name == "float16" else torch.bfloat16


def checkpoint_dtype_name(model_dir: str) -> str | None:
    """The dtype the checkpoint declares (`dtype` in transformers 5, `torch_dtype` before)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    return raw.get("dtype") or raw.get("torch_dtype")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
