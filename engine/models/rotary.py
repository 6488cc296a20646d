"""Rotary position embedding tables: inverse frequencies and the cos/sin cache.

Supported rope types: "default" (theta ** (-2i / D)), "linear" (frequencies divided by
the factor, i.e. positions stretched), "llama3" (Llama 3.1's wavelength-dependent
scaling: long wavelengths divided by the factor, short ones kept, a smooth blend between).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lodger.engine.model_config import RopeConfig


def inv_freq(rope: RopeConfig, head_dim: int) -> Tensor:
    """[head_dim // 2] float32 angular frequencies of the rotary pairs."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    base = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "default":
        return base
    if rope.rope_type == "linear":
        return base / rope.factor
    assert rope.rope_type == "llama3", rope.rope_type
    return _llama3_scale(base, rope)


def _llama3_scale(freqs: Tensor, rope: RopeConfig) -> Tensor:
    """Wavelengths above old_len / low_freq_factor are stretched by `factor`, those below
    old_len / high_freq_factor kept, and the band between blends the two linearly in
    old_len / wavelength."""
    old_len = rope.original_max_position_embeddings
    wavelengths = 2 * math.pi / freqs
    long_wavelength = old_len / rope.low_freq_factor
    short_wavelength = old_len / rope.high_freq_factor
    stretched = torch.where(wavelengths > long_wavelength, freqs / rope.factor, freqs)
    blend = (old_len / wavelengths - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    blended = (1 - blend) * stretched / rope.factor + blend * stretched
    in_band = (wavelengths >= short_wavelength) & (wavelengths <= long_wavelength)
    return torch.where(in_band, blended, stretched)


def cos_sin_cache(rope: RopeConfig, head_dim: int, max_positions: int) -> Tensor:
    """[max_positions, head_dim] float32: cat(cos, sin) of position * inv_freq, on the CPU.

    The layout `ops.apply_rotary` expects (rotate-half pairs i and i + head_dim // 2).
    """
    freqs = inv_freq(rope, head_dim)
    positions = torch.arange(max_positions, dtype=torch.int64).float()
    angles = positions[:, None] * freqs[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)
