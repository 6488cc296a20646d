"""The ops the model calls. CUDA tensors run the Triton kernels; everything else (and CUDA
with env LODGER_TORCH_OPS=1) runs the plain-torch references in lodger.kernels.reference.

The Triton modules are imported on the first CUDA call, so this module imports (and the CPU
engine runs) where triton is missing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from lodger.kernels import reference
from lodger.kernels.attention_metadata import AttentionMetadata

if TYPE_CHECKING:  # lodger.kernels.linear needs triton, which the CPU engine may lack
    from lodger.kernels.linear import SplitKPartials

__all__ = [
    "AttentionMetadata",
    "apply_rotary",
    "fused_add_rms_norm",
    "linear",
    "paged_attention",
    "rms_norm",
    "silu_and_mul",
    "silu_and_mul_linear",
    "use_triton",
    "write_kv_cache",
]


def use_triton(x: Tensor) -> bool:
    """Whether an op on x runs its Triton kernel: x is on CUDA and LODGER_TORCH_OPS != 1."""
    return x.is_cuda and os.environ.get("LODGER_TORCH_OPS", "0") != "1"


def write_kv_cache(
    k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor
) -> None:
    """Store the new tokens' k/v [T, Hkv, D] at their cache slots; slot -1 is skipped."""
    if use_triton(k):
        from lodger.kernels import kv_cache_write

        return kv_cache_write.write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    return reference.write_kv_cache(k, v, k_cache, v_cache, slot_mapping)


def paged_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, meta: AttentionMetadata, scale: float
) -> Tensor:
    """Causal attention of q [T, Hq, D] over each sequence's paged context -> [T, Hq, D].

    Decode-only batches take the split-KV decode kernel, any other batch the prefill kernel.
    """
    if not use_triton(q):
        return reference.paged_attention(q, k_cache, v_cache, meta, scale)
    if meta.decode_only:
        from lodger.kernels import decode_attention

        return decode_attention.decode_attention(q, k_cache, v_cache, meta, scale)
    from lodger.kernels import prefill_attention

    return prefill_attention.prefill_attention(q, k_cache, v_cache, meta, scale)


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, unreduced: bool = False
) -> Tensor | SplitKPartials:
    """x [M, K] @ weight [N, K].T (+ bias): on CUDA cuBLAS or lodger's skinny matmul,
    whichever start-up tuning found faster for this shape and batch size. unreduced: the
    result only goes to fused_add_rms_norm, which takes a split K's partials unsummed (on
    CUDA it may then be a SplitKPartials rather than a tensor)."""
    if use_triton(x):
        from lodger.kernels import linear_tuning

        return linear_tuning.linear(x, weight, bias, unreduced)
    return F.linear(x, weight, bias)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """HF Llama RMSNorm of x [T, H] -> a new tensor."""
    if use_triton(x):
        from lodger.kernels import rms_norm as triton_rms_norm

        return triton_rms_norm.rms_norm(x, weight, eps)
    return reference.rms_norm(x, weight, eps)


def fused_add_rms_norm(
    x: Tensor | SplitKPartials, residual: Tensor, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """(rms_norm(x + residual), x + residual) as new tensors; the inputs are not modified.
    x may be what linear(..., unreduced=True) returned."""
    if use_triton(residual):
        from lodger.kernels import rms_norm as triton_rms_norm

        return triton_rms_norm.fused_add_rms_norm(x, residual, weight, eps)
    if not isinstance(x, Tensor):  # a split K's partials made while Triton ops were on
        x = x.reduce()
    return reference.fused_add_rms_norm(x, residual, weight, eps)


def apply_rotary(
    q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor,
    q_norm_weight: Tensor | None = None, k_norm_weight: Tensor | None = None,
    eps: float = 0.0, kv_cache: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Rotate-half rotary embedding of q [T, Hq, D] and k [T, Hkv, D] in place; returns them.
    With q_norm_weight / k_norm_weight [D] each head is RMS-normalised first (Qwen3). With
    kv_cache = (v, k_cache, v_cache, slot_mapping) the rotated k and v are then stored as
    write_kv_cache does (one launch on CUDA)."""
    if use_triton(q):
        from lodger.kernels import rotary

        return rotary.apply_rotary(
            q, k, positions, cos_sin_cache, q_norm_weight, k_norm_weight, eps, kv_cache
        )
    reference.apply_rotary(q, k, positions, cos_sin_cache, q_norm_weight, k_norm_weight, eps)
    if kv_cache is not None:
        v, k_cache, v_cache, slot_mapping = kv_cache
        reference.write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    return q, k


def silu_and_mul_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, unreduced: bool = False
) -> Tensor | SplitKPartials:
    """linear(silu_and_mul(x), weight, bias, unreduced) for packed [gate | up] rows x
    [T, 2 * I] (an MLP's down projection): on CUDA one launch where tuning chose the GEMV
    for this batch."""
    if use_triton(x):
        from lodger.kernels import linear_tuning

        return linear_tuning.silu_and_mul_linear(x, weight, bias, unreduced)
    return F.linear(reference.silu_and_mul(x), weight, bias)


def silu_and_mul(x: Tensor) -> Tensor:
    """silu(x[:, :I]) * x[:, I:] for x [T, 2 * I] -> a new [T, I] tensor."""
    if use_triton(x):
        from lodger.kernels import activation

        return activation.silu_and_mul(x)
    return reference.silu_and_mul(x)
