"""The ops the model calls. CUDA tensors run the Triton kernels, everything else (and CUDA
with env LODGER_TORCH_OPS=1) the plain-torch references in lodger.kernels.reference.

Triton is imported only when a CUDA op runs, so this module imports where triton is missing.
"""

import os

from torch import Tensor

from lodger.kernels import reference
from lodger.kernels.attention_metadata import AttentionMetadata

__all__ = [
    "AttentionMetadata",
    "apply_rotary",
    "fused_add_rms_norm",
    "paged_attention",
    "rms_norm",
    "silu_and_mul",
    "use_triton",
    "write_kv_cache",
]


def use_triton(x: Tensor) -> bool:
    """Whether an op on x runs the Triton kernel (CUDA and LODGER_TORCH_OPS is not 1)."""
    return x.is_cuda and os.environ.get("LODGER_TORCH_OPS", "0") != "1"


def write_kv_cache(
    k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor
) -> None:
    """Store the new tokens' k/v [T, Hkv, D] at their slots; slot -1 is skipped."""
    reference.write_kv_cache(k, v, k_cache, v_cache, slot_mapping)


def paged_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, meta: AttentionMetadata, scale: float
) -> Tensor:
    """Causal attention of q [T, Hq, D] over each sequence's paged context -> [T, Hq, D]."""
    return reference.paged_attention(q, k_cache, v_cache, meta, scale)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """HF Llama RMSNorm of x [T, H]."""
    return reference.rms_norm(x, weight, eps)


def fused_add_rms_norm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """(rms_norm(x + residual), x + residual)."""
    return reference.fused_add_rms_norm(x, residual, weight, eps)


def apply_rotary(
    q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor
) -> tuple[Tensor, Tensor]:
    """Rotate-half rotary embedding of q [T, Hq, D] and k [T, Hkv, D] in place."""
    return reference.apply_rotary(q, k, positions, cos_sin_cache)


def silu_and_mul(x: Tensor) -> Tensor:
    """silu(x[:, :I]) * x[:, I:] for x [T, 2 * I]."""
    return reference.silu_and_mul(x)
