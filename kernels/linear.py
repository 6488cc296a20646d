"""Triton matmul for skinny batches: out = x @ weight.T (+ bias), x [M, K], weight [N, K].

Decode steps multiply a few to a few hundred rows by each weight matrix. At that size the
matmul only has to read the weight once, and cuBLAS's tile choice for some shapes leaves
the card half idle (few output tiles on 132 SMs, or a split-K reduce). This kernel covers
those shapes with a launch configuration picked per shape by timing on the card itself
(lodger.kernels.linear_tuning); anything not tuned stays with cuBLAS (F.linear).

Two kernels:
- `_matmul_kernel`: tiles of BLOCK_M rows x BLOCK_N columns with `tl.dot`, consecutive
  programs taking the M tiles of one N tile (so a weight tile is read from memory once and
  from L2 by the others); with SPLIT_K > 1 each program covers a slice of K and writes a
  float32 partial that `_split_k_sum_kernel` adds up (plus bias) into the output, or that
  the next kernel adds up itself (`linear_unreduced` returns the partials as a
  `SplitKPartials`; the fused residual-add + RMSNorm takes one, which saves a launch).
- `_gemv_kernel`: one row of x per program column, no tensor cores: elementwise products
  summed in float32, for M of one or two rows.

Accumulation is in float32; the output is rounded to x's dtype once, as cuBLAS does.
Torch reference: F.linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from lodger.kernels.activation import silu_mul
from lodger.kernels.pdl import await_prior_kernel, launch_options


@dataclass(frozen=True)
class LinearConfig:
    """One launch configuration. kind "dot" uses `_matmul_kernel` (block_m rows per tile,
    split_k slices of K); kind "gemv" uses `_gemv_kernel` (block_m and split_k unused)."""

    kind: str = "dot"
    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 4

    def __post_init__(self) -> None:
        assert self.kind in ("dot", "gemv"), f"kind must be 'dot' or 'gemv', got {self.kind!r}"
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            assert value >= 1 and value & (value - 1) == 0, f"{name} must be a power of two"
        assert self.kind == "gemv" or self.block_m >= 16, "tl.dot needs block_m >= 16"
        assert self.split_k >= 1 and self.num_warps >= 1 and self.num_stages >= 1


@dataclass(frozen=True)
class SplitKPartials:
    """A split-K matmul's result before its sum: out = (sum of partials over the splits, in
    split order, + bias) rounded once to `dtype`. Whatever reads it adds the splits up the
    same way; `reduce()` does it with the sum kernel."""

    partials: Tensor  # float32 [split_k, M, N], contiguous
    bias: Tensor | None  # [N] in dtype
    dtype: torch.dtype  # the output's

    def __post_init__(self) -> None:
        assert self.partials.dim() == 3 and self.partials.dtype == torch.float32
        assert self.partials.is_contiguous()
        assert self.bias is None or self.bias.shape == self.partials.shape[2:]

    @property
    def shape(self) -> torch.Size:
        """[M, N], the reduced output's."""
        return self.partials.shape[1:]

    def reduce(self, out: Tensor | None = None) -> Tensor:
        """The output [M, N] in dtype (into out when given)."""
        split_k, num_rows, num_cols = self.partials.shape
        if out is None:
            out = torch.empty(num_rows, num_cols, dtype=self.dtype, device=self.partials.device)
        assert out.shape == self.shape and out.dtype == self.dtype and out.stride(1) == 1
        if num_rows == 0:
            return out
        block = min(1024, triton.next_power_of_2(num_cols))
        _split_k_sum_kernel[(num_rows, triton.cdiv(num_cols, block))](
            self.partials, self.bias if self.bias is not None else out, out, num_rows,
            num_cols, num_rows * num_cols, out.stride(0), SPLIT_K=split_k, BLOCK=block,
            HAS_BIAS=self.bias is not None, **launch_options(out.device),
        )  # fmt: skip
        return out


# M (the batch's rows) is not specialized: Triton would build another variant for each
# kernel the first time M is 1 or a multiple of 16 or neither, which on a server means a
# compile inside a step (the LM head runs outside the CUDA graphs at every sampled-row count).
@triton.jit(do_not_specialize=["M"])
def _matmul_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, M, N, K, k_per_split,
    stride_xm, stride_wn, stride_om, stride_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """Program (tile, split): out tile = x[m tile, K slice] @ w[n tile, K slice].T.
    With SPLIT_K > 1, out_ptr is a float32 [SPLIT_K, M, N] workspace."""
    await_prior_kernel(USE_PDL)
    tile = tl.program_id(0)
    split = tl.program_id(1)
    num_m_tiles = tl.cdiv(M, BLOCK_M)
    rows = (tile % num_m_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (tile // num_m_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    depth = tl.arange(0, BLOCK_K)
    k_start = split * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    row_mask = rows[:, None] < M
    col_mask = cols[None, :] < N
    x_ptrs = x_ptr + rows[:, None].to(tl.int64) * stride_xm + (k_start + depth)[None, :]
    w_ptrs = w_ptr + cols[None, :].to(tl.int64) * stride_wn + (k_start + depth)[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs, mask=row_mask, other=0.0)
            w = tl.load(w_ptrs, mask=col_mask, other=0.0)
        else:
            in_k = (k + depth) < k_end
            x = tl.load(x_ptrs, mask=row_mask & in_k[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=col_mask & in_k[:, None], other=0.0)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    out_mask = row_mask & col_mask
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        out = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        out = out_ptr + split * stride_split + rows[:, None].to(tl.int64) * N + cols[None, :]
        tl.store(out, acc, mask=out_mask)


@triton.jit(do_not_specialize=["M"])
def _split_k_sum_kernel(
    partial_ptr, bias_ptr, out_ptr, M, N, stride_split, stride_om,
    SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """Program (row, chunk): out[row, chunk] = sum of the SPLIT_K partials (+ bias)."""
    await_prior_kernel(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    partial_ptrs = partial_ptr + row * N + cols
    acc = sum_split_k(partial_ptrs, stride_split, mask, bias, SPLIT_K, HAS_BIAS, BLOCK)
    tl.store(out_ptr + row * stride_om + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def sum_split_k(
    partial_ptrs, stride_split, mask, bias,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """A split K's output in float32, before its one rounding: the SPLIT_K partials at
    partial_ptrs (stride_split apart) added in split order, then the bias (float32). The
    sum kernel and the fused add + RMSNorm both add them up this way, so they agree bit
    for bit."""
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for split in tl.static_range(SPLIT_K):
        acc += tl.load(partial_ptrs + split * stride_split, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += bias
    return acc


@triton.jit
def _load_chunk(ptrs, mask, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return tl.load(ptrs).to(tl.float32)


@triton.jit
def _load_gemv_x(x_ptrs, mask, up_offset, GATED: tl.constexpr, MASKED: tl.constexpr):
    """One chunk of a GEMV's input row in float32; GATED: silu(gate) * up of the packed
    [gate | up] row (up_offset elements apart), rounded as silu_and_mul rounds it."""
    x = _load_chunk(x_ptrs, mask, MASKED)
    if GATED:
        up = _load_chunk(x_ptrs + up_offset, mask, MASKED)
        return silu_mul(x, up, x_ptrs.dtype.element_ty)
    return x


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, N, K, stride_xm, stride_wn, stride_om,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, GATED: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """Program (n tile, row): out[row, n tile] = sum over K of w[n tile, k] * x[row, k].
    GATED: x[row] is a packed [gate | up] row of 2 * K and the input is silu(gate) * up."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row = tl.program_id(1).to(tl.int64)
    depth = tl.arange(0, BLOCK_K)
    col_mask = cols[:, None] < N
    x_ptrs = x_ptr + row * stride_xm + depth
    w_ptrs = w_ptr + cols[:, None].to(tl.int64) * stride_wn + depth[None, :]
    # No kernel writes the weights: the first chunk loads while the prior kernel finishes.
    in_k = depth < K
    w = tl.load(w_ptrs, mask=col_mask & in_k[None, :], other=0.0)
    await_prior_kernel(USE_PDL)
    x = _load_gemv_x(x_ptrs, in_k, K, GATED, True)
    acc = w.to(tl.float32) * x[None, :]
    for k in range(BLOCK_K, K, BLOCK_K):
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
        if EVEN_K:
            x = _load_gemv_x(x_ptrs, in_k, K, GATED, False)
            w = tl.load(w_ptrs, mask=col_mask, other=0.0)
        else:
            in_k = (k + depth) < K
            x = _load_gemv_x(x_ptrs, in_k, K, GATED, True)
            w = tl.load(w_ptrs, mask=col_mask & in_k[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    total = tl.sum(acc, axis=1)
    if HAS_BIAS:
        total += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_om + cols, total.to(out_ptr.dtype.element_ty), mask=cols < N)


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, gated: bool) -> None:
    depth = weight.shape[1] * (2 if gated else 1)
    assert x.dim() == 2 and weight.dim() == 2 and x.shape[1] == depth, (
        f"x must be [M, {depth}] for weight {tuple(weight.shape)}"
        f"{' (packed gate and up rows)' if gated else ''}, got {tuple(x.shape)}"
    )
    assert x.dtype == weight.dtype, f"x is {x.dtype}, weight is {weight.dtype}"
    assert x.stride(1) == 1 and weight.stride(1) == 1, "x and weight rows must be contiguous"
    assert x.device == weight.device
    if bias is not None:
        assert bias.shape == (weight.shape[0],) and bias.dtype == weight.dtype, (
            f"bias must be [{weight.shape[0]}] {weight.dtype}, got {tuple(bias.shape)}"
        )
        assert bias.is_contiguous()


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, config: LinearConfig,
    out: Tensor | None = None, gated: bool = False,
) -> Tensor:  # fmt: skip
    """x [M, K] @ weight [N, K].T (+ bias [N]) -> out [M, N] in x's dtype. gated (GEMV
    only): x is [M, 2 * K] packed [gate | up] rows and the input is silu_and_mul(x)."""
    result = _launch(x, weight, bias, config, out, gated)
    return result.reduce(out) if isinstance(result, SplitKPartials) else result


def linear_unreduced(
    x: Tensor, weight: Tensor, bias: Tensor | None, config: LinearConfig, gated: bool = False
) -> Tensor | SplitKPartials:
    """linear(), but a split K's partials are returned unsummed, for a kernel that adds
    them up as it reads them (rms_norm.fused_add_rms_norm)."""
    return _launch(x, weight, bias, config, None, gated)


def _launch(
    x: Tensor, weight: Tensor, bias: Tensor | None, config: LinearConfig,
    out: Tensor | None, gated: bool,
) -> Tensor | SplitKPartials:  # fmt: skip
    _check(x, weight, bias, gated)
    assert not gated or config.kind == "gemv", "only the GEMV takes gated input"
    num_rows, (num_cols, depth) = x.shape[0], weight.shape
    k_per_split = triton.cdiv(triton.cdiv(depth, config.split_k), config.block_k) * config.block_k
    split_k = triton.cdiv(depth, k_per_split)  # no empty slices
    if config.kind == "dot" and split_k > 1:
        target = torch.empty(split_k, num_rows, num_cols, dtype=torch.float32, device=x.device)
    else:
        if out is None:
            out = torch.empty(num_rows, num_cols, dtype=x.dtype, device=x.device)
        assert out.shape == (num_rows, num_cols) and out.dtype == x.dtype and out.stride(1) == 1
        target = out
    if num_rows == 0:
        return target if target is out else SplitKPartials(target, bias, x.dtype)
    bias_arg = bias if bias is not None else weight
    common = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    common.update(launch_options(x.device))
    if config.kind == "gemv":
        grid = (triton.cdiv(num_cols, config.block_n), num_rows)
        _gemv_kernel[grid](
            x, weight, bias_arg, out, num_cols, depth, x.stride(0), weight.stride(0),
            out.stride(0), BLOCK_N=config.block_n, BLOCK_K=config.block_k,
            EVEN_K=depth % config.block_k == 0, HAS_BIAS=bias is not None, GATED=gated,
            **common,
        )  # fmt: skip
        return out
    tiles = triton.cdiv(num_rows, config.block_m) * triton.cdiv(num_cols, config.block_n)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    _matmul_kernel[(tiles, split_k)](
        x, weight, bias_arg, target, num_rows, num_cols, depth, k_per_split,
        x.stride(0), weight.stride(0), target.stride(-2), num_rows * num_cols,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        SPLIT_K=split_k, EVEN_K=k_per_split * split_k == depth, HAS_BIAS=bias is not None,
        PRECISION=precision, **common,
    )  # fmt: skip
    return target if target is out else SplitKPartials(target, bias, x.dtype)
