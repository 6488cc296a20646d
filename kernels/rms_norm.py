"""Triton RMSNorm and fused residual-add + RMSNorm, with HF Llama's rounding order.

Torch references: lodger.kernels.reference.rms_norm and fused_add_rms_norm. The row is
normalised in float32, cast to the input dtype, then multiplied by the weight; the product
of two 16-bit floats is exact in float32, so one rounding gives HF's result bit for bit.

The fused add also takes its x as a split-K matmul's unsummed partials
(lodger.kernels.linear.SplitKPartials): it adds them up as the sum kernel would (float32, in
split order, + bias, one rounding), so the matmul's sum kernel is not launched and the
result is the same bit for bit.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from lodger.kernels.linear import SplitKPartials, sum_split_k
from lodger.kernels.pdl import await_prior_kernel, launch_options


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr, bias_ptr,
    stride_x, stride_x_split, stride_residual, stride_out, stride_sum,
    hidden_size, eps,
    ADD_RESIDUAL: tl.constexpr, X_SPLITS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """One program per row: (optionally x + residual ->) RMSNorm(row) * weight. X_SPLITS > 0:
    x is X_SPLITS float32 partials (stride_x_split apart) whose sum + bias is x's row."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden_size
    dtype = out_ptr.dtype.element_ty
    # No kernel writes the weights: they load while the prior kernel finishes.
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    await_prior_kernel(USE_PDL)
    if X_SPLITS == 0:
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        partial_ptrs = x_ptr + row * stride_x + cols
        x = sum_split_k(partial_ptrs, stride_x_split, mask, bias, X_SPLITS, HAS_BIAS, BLOCK)
        x = x.to(dtype).to(tl.float32)  # the matmul's output, rounded once
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
    """x: a [T, H] tensor, or (with a residual) the SplitKPartials of one."""
    num_tokens, hidden_size = x.shape
    if num_tokens == 0:
        return
    add = residual is not None
    if isinstance(x, SplitKPartials):
        assert add, "partials are summed only by the fused add"
        x_arg, num_splits, bias = x.partials, x.partials.shape[0], x.bias
        split_stride, row_stride = x.partials.stride(0), x.partials.stride(1)
    else:
        x_arg, num_splits, bias, split_stride, row_stride = x, 0, None, 0, x.stride(0)
    _rms_norm_kernel[(num_tokens,)](
        x_arg, residual if add else x_arg, weight, out, summed if add else out,
        bias if bias is not None else weight,
        row_stride, split_stride, residual.stride(0) if add else 0, out.stride(0),
        summed.stride(0) if add else 0, hidden_size, eps,
        ADD_RESIDUAL=add, X_SPLITS=num_splits, HAS_BIAS=bias is not None,
        BLOCK=triton.next_power_of_2(hidden_size), num_warps=4 if hidden_size <= 4096 else 8,
        **launch_options(out.device),
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
    x: Tensor | SplitKPartials,
    residual: Tensor,
    weight: Tensor,
    eps: float,
    out: Tensor | None = None,
    summed: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(weight * RMSNorm(x + residual), x + residual) into out and summed (new tensors when
    None); x and residual are not modified. x may be a split-K matmul's unsummed partials."""
    _check(residual, weight)
    assert x.shape == residual.shape and x.dtype == residual.dtype, (
        f"x must be {tuple(residual.shape)} {residual.dtype} like the residual, got "
        f"{tuple(x.shape)} {x.dtype}"
    )
    assert isinstance(x, SplitKPartials) or x.stride(1) == 1, "x rows must be contiguous"
    out = _new_or_checked(out, residual)
    summed = _new_or_checked(summed, residual)
    _launch(x, residual, weight, out, summed, eps)
    return out, summed
