"""Triton RMSNorm and fused residual-add + RMSNorm, with HF Llama's rounding order.

Torch references: lodger.kernels.reference.rms_norm and fused_add_rms_norm. The row is
normalised in float32, cast to the input dtype, then multiplied by the weight; the product
of two 16-bit floats is exact in float32, so one rounding gives HF's result bit for bit.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from lodger.kernels.pdl import await_prior_kernel, launch_options


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr,
    stride_x, stride_residual, stride_out, stride_sum,
    hidden_size, eps,
    ADD_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """One program per row: (optionally x + residual ->) RMSNorm(row) * weight."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden_size
    dtype = out_ptr.dtype.element_ty
    # No kernel writes the weight: it loads while the prior kernel finishes.
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    await_prior_kernel(USE_PDL)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if ADD_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0)
        x = (x + residual.to(tl.float32)).to(dtype)  # rounded like a 16-bit add
        tl.store(sum_ptr + row * stride_sum + cols, x, mask=mask)
        x = x.to(tl.float32)
    variance = tl.sum(x * x, axis=0) / hidden_size
    normed = (x * tl.rsqrt(variance + eps)).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (weight * normed).to(dtype), mask=mask)


def _check(x: Tensor, weight: Tensor) -> None:
    assert x.dim() == 2, f"x must be [num_tokens, hidden], got {tuple(x.shape)}"
    assert weight.shape == (x.shape[1],), (
        f"weight must be [{x.shape[1]}], got {tuple(weight.shape)}"
    )
    assert weight.dtype == x.dtype, f"weight dtype {weight.dtype} must equal x dtype {x.dtype}"
    assert x.stride(1) == 1 and weight.is_contiguous(), "rows must be contiguous"


def _launch(x, residual, weight, out, summed, eps) -> None:
    num_tokens, hidden_size = x.shape
    if num_tokens == 0:
        return
    add = residual is not None
    _rms_norm_kernel[(num_tokens,)](
        x, residual if add else x, weight, out, summed if add else out,
        x.stride(0), residual.stride(0) if add else 0, out.stride(0),
        summed.stride(0) if add else 0,
        hidden_size, eps,
        ADD_RESIDUAL=add, BLOCK=triton.next_power_of_2(hidden_size),
        num_warps=4 if hidden_size <= 4096 else 8, **launch_options(x.device),
    )  # fmt: skip


def _new_or_checked(out: Tensor | None, x: Tensor) -> Tensor:
    if out is None:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    assert out.shape == x.shape and out.dtype == x.dtype and out.stride(1) == 1, (
        f"outputs must be {tuple(x.shape)} {x.dtype} with contiguous rows"
    )
    return out


def rms_norm(x: Tensor, weight: Tensor, eps: float, out: Tensor | None = None) -> Tensor:
    """weight * RMSNorm(x) for x [T, H]; written to out (a new tensor when None)."""
    _check(x, weight)
    out = _new_or_checked(out, x)
    _launch(x, None, weight, out, None, eps)
    return out


def fused_add_rms_norm(
    x: Tensor,
    residual: Tensor,
    weight: Tensor,
    eps: float,
    out: Tensor | None = None,
    summed: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(weight * RMSNorm(x + residual), x + residual) into out and summed (new tensors when
    None); x and residual are not modified."""
    _check(x, weight)
    assert residual.shape == x.shape and residual.dtype == x.dtype, (
        f"residual must be {tuple(x.shape)} {x.dtype}, got {tuple(residual.shape)} "
        f"{residual.dtype}"
    )
    assert residual.stride(1) == 1, "residual rows must be contiguous"
    out = _new_or_checked(out, x)
    summed = _new_or_checked(summed, x)
    _launch(x, residual, weight, out, summed, eps)
    return out, summed
