"""Triton rotary embedding (rotate-half, GPT-NeoX/HF Llama layout) applied to q and k in place,
optionally after a per-head RMSNorm of each (Qwen3's q_norm / k_norm) in the same pass.

Torch reference: lodger.kernels.reference.apply_rotary. cos/sin come from the model's
float32 cos_sin_cache (Llama-3 scaling is already in it); the rotation runs in float32.
The fused norm rounds like lodger.kernels.rms_norm (normalise in float32, cast, times the
weight, cast), so norm + rotary here equals the two kernels one after the other, and q and
k stay strided views of the qkv projection (no copies to make heads contiguous).
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from lodger.kernels.kv_cache_write import check_kv_cache_args, store_token_kv
from lodger.kernels.pdl import await_prior_kernel, launch_options


@triton.jit
def _rotate_heads(
    x_ptr, stride_h, num_heads, cos, sin, weight_ptr, eps,
    HEADS_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr, NORM: tl.constexpr,
):  # fmt: skip
    """Rotate the first 2 * HALF dims of every head of one token's [H, D] row, in place;
    with NORM (then D == 2 * HALF) each head is RMS-normalised and weighted first."""
    heads = tl.arange(0, HEADS_PAD)[:, None]
    dims = tl.arange(0, HALF_PAD)[None, :]
    mask = (heads < num_heads) & (dims < HALF)
    first = x_ptr + heads * stride_h + dims
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=mask, other=0.0).to(tl.float32)
    dtype = x_ptr.dtype.element_ty
    if NORM:
        variance = (tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF)
        scale = tl.rsqrt(variance + eps)[:, None]
        w1 = tl.load(weight_ptr + dims, mask=dims < HALF, other=0.0).to(tl.float32)
        w2 = tl.load(weight_ptr + HALF + dims, mask=dims < HALF, other=0.0).to(tl.float32)
        x1 = (w1 * (x1 * scale).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
        x2 = (w2 * (x2 * scale).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    tl.store(first, (x1 * cos - x2 * sin).to(dtype), mask=mask)
    tl.store(first + HALF, (x2 * cos + x1 * sin).to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, positions_ptr, cache_ptr, q_weight_ptr, k_weight_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cache,
    num_q_heads, num_kv_heads, eps,
    v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, stride_vt, stride_vh,
    stride_cache_block, stride_cache_slot, stride_cache_head,
    Q_HEADS_PAD: tl.constexpr, KV_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, NORM: tl.constexpr,
    WRITE_KV: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, DIM_PAD: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """One program per token: cos/sin of its position, then all q heads and all k heads;
    with WRITE_KV the rotated k and the v rows then go to the token's cache slot."""
    # the step's inputs and the cos/sin table, which no kernel of the step writes, load
    # while the previous kernel (the q/k/v projection) may still run (kernels/pdl.py)
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token)
    dims = tl.arange(0, HALF_PAD)[None, :]
    cos = tl.load(cache_ptr + position * stride_cache + dims, mask=dims < HALF, other=0.0)
    sin = tl.load(cache_ptr + position * stride_cache + HALF + dims, mask=dims < HALF, other=0.0)
    if WRITE_KV:
        slot = tl.load(slot_ptr + token)
    await_prior_kernel(USE_PDL)
    _rotate_heads(
        q_ptr + token * stride_qt, stride_qh, num_q_heads, cos, sin, q_weight_ptr, eps,
        Q_HEADS_PAD, HALF, HALF_PAD, NORM,
    )
    _rotate_heads(
        k_ptr + token * stride_kt, stride_kh, num_kv_heads, cos, sin, k_weight_ptr, eps,
        KV_HEADS_PAD, HALF, HALF_PAD, NORM,
    )
    if WRITE_KV:  # noqa: SIM102 - a compile-time branch: slot exists only under it
        if slot >= 0:  # -1: padding token of a CUDA-graph batch
            tl.debug_barrier()  # the rotated k rows above are stored by other threads
            store_token_kv(
                k_ptr + token * stride_kt, v_ptr + token * stride_vt, k_cache_ptr,
                v_cache_ptr, slot, stride_kh, stride_vh, stride_cache_block,
                stride_cache_slot, stride_cache_head, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE,
                KV_HEADS_PAD, DIM_PAD,
            )  # fmt: skip


def apply_rotary(
    q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor,
    q_norm_weight: Tensor | None = None, k_norm_weight: Tensor | None = None,
    eps: float = 0.0, kv_cache: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] (rows may be strided views) in place; with
    q_norm_weight and k_norm_weight [D], RMS-normalise each head (eps) first. With
    kv_cache = (v, k_cache, v_cache, slot_mapping), also store each token's rotated k and
    its v at its slot (-1 skips), as write_kv_cache would, in the same launch."""
    num_tokens, num_q_heads, head_dim = q.shape
    assert k.dim() == 3 and k.shape[0] == num_tokens and k.shape[2] == head_dim, (
        f"k must be [{num_tokens}, num_kv_heads, {head_dim}], got {tuple(k.shape)}"
    )
    assert q.stride(2) == 1 and k.stride(2) == 1, "q and k must be contiguous in head_dim"
    assert q.dtype == k.dtype
    assert positions.shape == (num_tokens,) and positions.dtype == torch.int64, (
        f"positions must be [{num_tokens}] int64, got {tuple(positions.shape)} {positions.dtype}"
    )
    rotary_dim = cos_sin_cache.shape[1]
    assert cos_sin_cache.dim() == 2 and rotary_dim % 2 == 0 and rotary_dim <= head_dim, (
        f"cos_sin_cache must be [max_pos, R] with even R <= {head_dim}, "
        f"got {tuple(cos_sin_cache.shape)}"
    )
    assert cos_sin_cache.dtype == torch.float32, "cos_sin_cache must be float32"
    assert cos_sin_cache.stride(1) == 1 and positions.is_contiguous()
    norm = q_norm_weight is not None
    assert norm == (k_norm_weight is not None), "give both norm weights or neither"
    if norm:
        assert rotary_dim == head_dim, "the fused norm needs rotary over the whole head"
        for name, weight in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
            assert weight.shape == (head_dim,) and weight.dtype == q.dtype, (
                f"{name} must be [{head_dim}] {q.dtype}, got {tuple(weight.shape)} {weight.dtype}"
            )
            assert weight.is_contiguous() and weight.device == q.device
    write_kv = kv_cache is not None
    if write_kv:
        v, k_cache, v_cache, slot_mapping = kv_cache
        check_kv_cache_args(k, v, k_cache, v_cache, slot_mapping)
    else:  # unused by the kernel: any tensors of the right kinds
        v, k_cache, v_cache, slot_mapping = k, k, k, positions
    if num_tokens == 0:
        return q, k
    half = rotary_dim // 2
    block_size = k_cache.shape[1] if write_kv else 1
    _rotary_kernel[(num_tokens,)](
        q, k, positions, cos_sin_cache,
        q_norm_weight if norm else cos_sin_cache, k_norm_weight if norm else cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
        num_q_heads, k.shape[1], eps,
        v, k_cache, v_cache, slot_mapping, v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        Q_HEADS_PAD=triton.next_power_of_2(num_q_heads),
        KV_HEADS_PAD=triton.next_power_of_2(k.shape[1]),
        HALF=half, HALF_PAD=triton.next_power_of_2(half), NORM=norm,
        WRITE_KV=write_kv, NUM_KV_HEADS=k.shape[1], HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, DIM_PAD=triton.next_power_of_2(head_dim),
        **launch_options(q.device),
    )  # fmt: skip
    return q, k
