"""Triton SiLU-and-mul: silu(gate) * up for the packed [gate | up] rows of a Llama MLP.

Torch reference: lodger.kernels.reference.silu_and_mul. Rounded like torch: silu in float32
rounded to the input dtype, then the product rounded again.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from lodger.kernels.pdl import await_prior_kernel, launch_options


@triton.jit
def silu_mul(gate, up, dtype: tl.constexpr):
    """silu(gate) * up from float32 values, rounded to dtype after each step as torch does;
    returned in float32 (exactly a dtype value)."""
    act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    return (act * up).to(dtype).to(tl.float32)


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr, stride_x, stride_out, intermediate_size,
    BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """Program (row, chunk): BLOCK columns of out[row] = silu(x[row, :I]) * x[row, I:]."""
    await_prior_kernel(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < intermediate_size
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + intermediate_size + cols, mask=mask, other=0.0)
    dtype = out_ptr.dtype.element_ty
    out = silu_mul(gate, up.to(tl.float32), dtype)
    tl.store(out_ptr + row * stride_out + cols, out.to(dtype), mask=mask)


def silu_and_mul(x: Tensor, out: Tensor | None = None) -> Tensor:
    """silu(x[:, :I]) * x[:, I:] for x [T, 2 * I] -> [T, I], into out (new when None)."""
    assert x.dim() == 2 and x.shape[1] % 2 == 0, f"x must be [T, 2 * I], got {tuple(x.shape)}"
    assert x.stride(1) == 1, "x rows must be contiguous"
    num_tokens, intermediate_size = x.shape[0], x.shape[1] // 2
    if out is None:
        out = torch.empty(num_tokens, intermediate_size, dtype=x.dtype, device=x.device)
    assert out.shape == (num_tokens, intermediate_size) and out.dtype == x.dtype, (
        f"out must be [{num_tokens}, {intermediate_size}] {x.dtype}, got {tuple(out.shape)}"
    )
    assert out.stride(1) == 1, "out rows must be contiguous"
    if num_tokens == 0:
        return out
    block = min(1024, triton.next_power_of_2(intermediate_size))
    grid = (num_tokens, triton.cdiv(intermediate_size, block))
    _silu_and_mul_kernel[grid](
        x, out, x.stride(0), out.stride(0), intermediate_size, block, **launch_options(x.device)
    )
    return out
