"""Triton kernel storing the new tokens' K/V into the paged cache by slot mapping.

Torch reference: lodger.kernels.reference.write_kv_cache.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from lodger.kernels.pdl import await_prior_kernel, launch_options


@triton.jit
def store_token_kv(
    k_row_ptr, v_row_ptr, k_cache_ptr, v_cache_ptr, slot, stride_kh, stride_vh,
    stride_cache_block, stride_cache_slot, stride_cache_head,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HEADS_PAD: tl.constexpr, DIM_PAD: tl.constexpr,
):  # fmt: skip
    """Copy one token's [Hkv, D] key and value rows to cache slot `slot` (>= 0)."""
    heads = tl.arange(0, HEADS_PAD)[:, None]
    dims = tl.arange(0, DIM_PAD)[None, :]
    mask = (heads < NUM_KV_HEADS) & (dims < HEAD_DIM)
    block = slot // BLOCK_SIZE
    cache_offset = block * stride_cache_block + (slot % BLOCK_SIZE) * stride_cache_slot
    cache_offset += heads * stride_cache_head + dims
    k = tl.load(k_row_ptr + heads * stride_kh + dims, mask=mask)
    v = tl.load(v_row_ptr + heads * stride_vh + dims, mask=mask)
    tl.store(k_cache_ptr + cache_offset, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + cache_offset, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cache_block, stride_cache_slot, stride_cache_head,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HEADS_PAD: tl.constexpr, DIM_PAD: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """One program per token: copy its [Hkv, D] key and value rows to its cache slot."""
    await_prior_kernel(USE_PDL)
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token)
    if slot >= 0:  # -1: padding token of a CUDA-graph batch
        store_token_kv(
            k_ptr + token * stride_kt, v_ptr + token * stride_vt, k_cache_ptr, v_cache_ptr,
            slot, stride_kh, stride_vh, stride_cache_block, stride_cache_slot,
            stride_cache_head, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, HEADS_PAD, DIM_PAD,
        )  # fmt: skip


def check_kv_cache_args(
    k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor
) -> None:
    """The shapes, dtypes and strides write_kv_cache (and the fused rotary) need."""
    num_tokens, num_kv_heads, head_dim = k.shape
    assert v.shape == k.shape, f"v shape {tuple(v.shape)} must equal k shape {tuple(k.shape)}"
    assert k_cache.dim() == 4 and k_cache.shape[2:] == (num_kv_heads, head_dim), (
        f"k_cache must be [num_blocks, block_size, {num_kv_heads}, {head_dim}], "
        f"got {tuple(k_cache.shape)}"
    )
    assert v_cache.shape == k_cache.shape and v_cache.stride() == k_cache.stride()
    assert k_cache.dtype == v_cache.dtype
    assert k_cache.stride(3) == 1, "the caches' head_dim must be contiguous"
    assert k.stride(2) == 1 and v.stride(2) == 1, "k and v must be contiguous in head_dim"
    assert slot_mapping.shape == (num_tokens,) and slot_mapping.dtype == torch.int64, (
        f"slot_mapping must be [{num_tokens}] int64, "
        f"got {tuple(slot_mapping.shape)} {slot_mapping.dtype}"
    )
    assert slot_mapping.is_contiguous()


def write_kv_cache(
    k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor
) -> None:
    """Store k[t], v[t] ([T, Hkv, D], rows may be strided) at slot slot_mapping[t]; -1 skips."""
    check_kv_cache_args(k, v, k_cache, v_cache, slot_mapping)
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    _write_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1],
        HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        DIM_PAD=triton.next_power_of_2(head_dim), **launch_options(k.device),
    )  # fmt: skip
