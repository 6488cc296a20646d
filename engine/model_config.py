"""ModelConfig: the parts of a checkpoint's config.json that lodger's decoder uses.

Parsed by us from the JSON (no transformers config classes at run time). Reads both the
transformers 4 spellings (`rope_theta` + `rope_scaling`, `torch_dtype`) and the
transformers 5 ones (`rope_parameters`, `dtype`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# `architectures` entries of config.json this decoder implements.
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(slots=True)
class RopeConfig:
    rope_type: str  # "default", "linear" or "llama3"
    theta: float  # base of the inverse frequencies
    factor: float = 1.0  # linear/llama3: context stretch factor
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only: pretraining context

    def __post_init__(self) -> None:
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope type {self.rope_type!r} is not supported; supported: "
                f"{list(SUPPORTED_ROPE_TYPES)}"
            )
        if self.theta <= 0 or self.factor <= 0:
            raise ValueError(f"rope theta and factor must be positive, got {self}")
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"llama3 rope needs high_freq_factor > low_freq_factor, got "
                f"{self.high_freq_factor} <= {self.low_freq_factor}"
            )


@dataclass(slots=True)
class ModelConfig:
    architecture: str  # one of SUPPORTED_ARCHITECTURES
    model_type: str  # "llama", "mistral", "qwen2", "qwen3" (informational)
    vocab_size: int  # rows of the embedding and of the LM head
    hidden_size: int  # residual stream width
    intermediate_size: int  # MLP width (gate and up each)
    num_hidden_layers: int  # decoder layers
    num_attention_heads: int  # query heads
    num_key_value_heads: int  # K/V heads (GQA when fewer than query heads)
    head_dim: int  # per-head width (may differ from hidden_size // num_attention_heads)
    rms_norm_eps: float  # epsilon of every RMSNorm
    rope: RopeConfig  # rotary embedding settings
    # Longest context lodger serves exactly: the config's max_position_embeddings, capped at
    # sliding_window when the model uses one (lodger has no sliding-window attention, and
    # within the window full attention is the same thing).
    max_position_embeddings: int
    sliding_window: int | None  # the checkpoint's attention window; None = full attention
    qkv_bias: bool  # q/k/v projections have biases (Qwen2; Llama/Qwen3 `attention_bias`)
    o_bias: bool  # the output projection has a bias (Llama/Qwen3 `attention_bias`)
    mlp_bias: bool  # gate/up/down projections have biases (Llama `mlp_bias`)
    qk_norm: bool  # per-head RMSNorm of q and k before rotary (Qwen3)
    tie_word_embeddings: bool  # the LM head reuses the embedding matrix
    eos_token_id: int | list[int] | None  # from config.json (the tokenizer's is authoritative)
    dtype: str | None  # the checkpoint's declared dtype name ("bfloat16", ...), if any

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"config.json field {name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @property
    def q_size(self) -> int:
        """Width of all query heads together."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of all key (or value) heads together."""
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike) -> ModelConfig:
        """Read `model_dir`/config.json."""
        path = os.path.join(os.fspath(model_dir), "config.json")
        with open(path) as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        architecture = _architecture(raw)
        hidden_size = raw["hidden_size"]
        num_heads = raw["num_attention_heads"]
        head_dim = raw.get("head_dim") or hidden_size // num_heads
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported; supported: ['silu']")
        if raw.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial_rotary_factor != 1.0 is not supported")
        attention_bias = bool(raw.get("attention_bias", False))
        is_qwen2 = architecture == "Qwen2ForCausalLM"
        sliding_window = _sliding_window(raw)
        return cls(
            architecture=architecture,
            model_type=raw.get("model_type", ""),
            vocab_size=raw["vocab_size"],
            hidden_size=hidden_size,
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=_rope(raw),
            max_position_embeddings=_max_positions(raw, sliding_window),
            sliding_window=sliding_window,
            qkv_bias=is_qwen2 or attention_bias,
            o_bias=attention_bias and not is_qwen2,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            qk_norm=architecture == "Qwen3ForCausalLM",
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            eos_token_id=raw.get("eos_token_id"),
            dtype=raw.get("dtype") or raw.get("torch_dtype"),
        )


def _architecture(raw: dict[str, Any]) -> str:
    names = raw.get("architectures") or []
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    raise ValueError(
        f"config.json architectures {names} are not supported; supported: "
        f"{list(SUPPORTED_ARCHITECTURES)}"
    )


def _rope(raw: dict[str, Any]) -> RopeConfig:
    """Rope settings from `rope_parameters` (transformers 5) or `rope_theta`/`rope_scaling`."""
    params = dict(raw.get("rope_parameters") or {})
    scaling = raw.get("rope_scaling") or {}
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", raw.get("rope_theta", 10000.0))
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    kwargs: dict[str, Any] = {"rope_type": rope_type, "theta": float(theta)}
    if rope_type in ("linear", "llama3"):
        kwargs["factor"] = float(merged.get("factor", 1.0))
    if rope_type == "llama3":
        kwargs["low_freq_factor"] = float(merged.get("low_freq_factor", 1.0))
        kwargs["high_freq_factor"] = float(merged.get("high_freq_factor", 4.0))
        kwargs["original_max_position_embeddings"] = int(
            merged.get("original_max_position_embeddings", raw.get("max_position_embeddings"))
        )
    return RopeConfig(**kwargs)


def _sliding_window(raw: dict[str, Any]) -> int | None:
    """The attention window, or None. Qwen2/Qwen3 only use theirs with use_sliding_window."""
    window = raw.get("sliding_window")
    if "use_sliding_window" in raw and not raw["use_sliding_window"]:
        return None
    return int(window) if window else None


def _max_positions(raw: dict[str, Any], sliding_window: int | None) -> int:
    limit = int(raw.get("max_position_embeddings", 2048))
    if sliding_window is not None and sliding_window < limit:
        logger.warning(
            "the model attends through a sliding window of %d tokens; lodger has no "
            "sliding-window attention, so max_model_len is capped at %d (from %d)",
            sliding_window, sliding_window, limit,
        )
        return sliding_window
    return limit
