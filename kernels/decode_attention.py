"""Triton paged decode attention: one query token per sequence, split-KV (flash-decoding).

Torch reference: lodger.kernels.reference.paged_attention (every query_len == 1).

Program (b, kv_head, split) loads each K/V tile of its share of sequence b's context once
and scores it against all the q heads that share kv_head (GQA of any ratio; the group is
padded to 16 rows for tl.dot). Programs start in batch order, all of a sequence's (kv
heads x splits) together, split by split, so a batch ordered longest context first (the
scheduler orders decode steps so) starts its longest programs first and ends on short ones
(the longest-processing-time rule). On an H200, engine-like batches of 32-256 sequences ran
4-10% faster in this order than kv head by kv head over a batch in admission order
(`bench/kernels.py --sweep order`), and nano 3.5% faster (docs/benchmarks.md, "Batch order
and program order").

Each split keeps an online softmax in float32; with several splits a second kernel merges
their partial outputs by log-sum-exp. Splits are sized per sequence on the device, so the
split count picked at launch (or at CUDA-graph capture) is correct for any context length;
it only trades parallelism against merge traffic.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from lodger.kernels.attention_metadata import AttentionMetadata
from lodger.kernels.pdl import await_prior_kernel, launch_options

LOG2E = 1.4426950408889634


@dataclass(slots=True)
class DecodeConfig:
    """Launch shape of the split kernel; defaults are the best of bench/kernels.py --sweep on
    an H100 (docs/benchmarks.md)."""

    block_n: int = 128  # context tokens per tile
    num_warps: int = 4
    num_stages: int = 3  # software-pipelining depth of the tile loads (GPU only)
    min_tokens_per_split: int = 128  # don't split a context finer than this
    # aim for this many programs: 4 per SM of an H100 (132 SMs), though 3 fit an SM at once
    # (sm_90, Triton 3.6: 74 KB of shared memory, ~160 registers); the split sweep in
    # docs/benchmarks.md found no better count
    target_programs: int = 528


@triton.jit
def attend_paged_tile(
    q, k_cache_ptr, v_cache_ptr, table, positions, valid, query_pos, head_offset, dims,
    dim_mask, m, denom, acc, scale_log2, stride_cache_block, stride_cache_slot,
    BLOCK_SIZE: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Fold one tile of a sequence's cached K/V into a running online softmax (decode and
    prefill attention share it). The tile is the context `positions` (those `valid` are
    loaded), read through the sequence's block-table row `table`; CAUSAL: q's row r sees
    only positions <= query_pos[r] (else every valid one). m (the running max of
    log2-scaled scores), denom (the running sum of exp2(score - m)) and acc come back
    updated."""
    block_ids = tl.load(table + positions // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
    offsets = block_ids * stride_cache_block + (positions % BLOCK_SIZE) * stride_cache_slot
    offsets = offsets + head_offset
    kv_mask = valid[:, None] & dim_mask[None, :]
    k = tl.load(k_cache_ptr + offsets[:, None] + dims[None, :], mask=kv_mask, other=0.0)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    if CAUSAL:
        visible = valid[None, :] & (positions[None, :] <= query_pos[:, None])
    else:
        visible = valid[None, :]
    scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, axis=1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(scores - m_new[:, None])
    denom = denom * alpha + tl.sum(p, axis=1)
    v = tl.load(v_cache_ptr + offsets[:, None] + dims[None, :], mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, denom, acc


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_ptr,
    out_ptr, partial_ptr, lse_ptr,
    scale_log2, num_splits,
    stride_qt, stride_qh,
    stride_cache_block, stride_cache_slot, stride_cache_head,
    stride_table,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr, NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    # one grid axis, sequence slowest and kv head fastest: a sequence's programs start
    # together, in batch order, and its first splits (the ones a context shorter than the
    # graph's longest does not leave empty) before its last
    program = tl.program_id(0)
    kv_head = program % NUM_KV_HEADS
    split = (program // NUM_KV_HEADS) % num_splits
    seq = program // (num_splits * NUM_KV_HEADS)
    # the step's inputs, which no kernel of the step writes, load while the previous kernel
    # (the rotary pass, which writes q and the new K/V) may still run (kernels/pdl.py)
    seq_len = tl.load(seq_lens_ptr + seq)
    token = tl.load(query_start_ptr + seq).to(tl.int64)
    await_prior_kernel(USE_PDL)
    # this split's share of the context, a whole number of tiles
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), num_splits)
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, seq_len)

    rows = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + rows
    row_mask = rows < GROUP
    dims = tl.arange(0, DIM_PAD)
    dim_mask = dims < HEAD_DIM
    q = tl.load(
        q_ptr + token * stride_qt + heads[:, None] * stride_qh + dims[None, :],
        mask=row_mask[:, None] & dim_mask[None, :], other=0.0,
    )  # fmt: skip

    m = tl.full([GROUP_PAD], -1.0e30, tl.float32)  # running max of the log2-scaled scores
    denom = tl.zeros([GROUP_PAD], tl.float32)  # running sum of exp2(score - m)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_table
    head_offset = kv_head * stride_cache_head
    for tile_start in range(start, end, BLOCK_N):
        positions = tile_start + tl.arange(0, BLOCK_N)
        valid = positions < end
        m, denom, acc = attend_paged_tile(
            q, k_cache_ptr, v_cache_ptr, table, positions, valid, seq_len, head_offset, dims,
            dim_mask, m, denom, acc, scale_log2, stride_cache_block, stride_cache_slot,
            BLOCK_SIZE, CAUSAL=False, DOT_PRECISION=DOT_PRECISION,
        )  # fmt: skip

    out = acc / tl.where(denom > 0, denom, 1.0)[:, None]  # an empty split has denom == acc == 0
    out_mask = row_mask[:, None] & dim_mask[None, :]
    if SINGLE_SPLIT:
        out_ptrs = out_ptr + token * stride_ot + heads[:, None] * stride_oh + dims[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # partial [B, Hq, num_splits, DIM_PAD] and lse [B, Hq, num_splits], float32
        slot = (seq.to(tl.int64) * NUM_Q_HEADS + heads) * num_splits + split
        tl.store(partial_ptr + slot[:, None] * DIM_PAD + dims[None, :], out, mask=out_mask)
        lse = tl.where(denom > 0, m + tl.log2(tl.where(denom > 0, denom, 1.0)), float("-inf"))
        tl.store(lse_ptr + slot, lse, mask=row_mask)


@triton.jit
def _decode_merge_kernel(
    partial_ptr, lse_ptr, query_start_ptr, out_ptr,
    num_splits, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    SPLITS_PAD: tl.constexpr, NUM_Q_HEADS: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """Program (b, q_head): weight each split's output by exp2(its lse - max lse)."""
    await_prior_kernel(USE_PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    token = tl.load(query_start_ptr + seq).to(tl.int64)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, DIM_PAD)
    base = (seq.to(tl.int64) * NUM_Q_HEADS + head) * num_splits
    lse = tl.load(lse_ptr + base + splits, mask=splits < num_splits, other=float("-inf"))
    lse_max = tl.max(lse, axis=0)
    weights = tl.where(lse > float("-inf"), tl.exp2(lse - tl.maximum(lse_max, -1.0e30)), 0.0)
    partial = tl.load(
        partial_ptr + (base + splits)[:, None] * DIM_PAD + dims[None, :],
        mask=(splits < num_splits)[:, None], other=0.0,
    )  # fmt: skip
    total = tl.sum(weights, axis=0)
    out = tl.sum(partial * weights[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    out_ptrs = out_ptr + token * stride_ot + head * stride_oh + dims
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


def choose_num_splits(
    num_seqs: int, num_kv_heads: int, max_seq_len: int, config: DecodeConfig
) -> int:
    """Enough splits to give the GPU config.target_programs programs, none below
    config.min_tokens_per_split tokens of the longest context."""
    wanted = triton.cdiv(config.target_programs, num_seqs * num_kv_heads)
    most = max(1, triton.cdiv(max_seq_len, config.min_tokens_per_split))
    return max(1, min(wanted, most, 64))


def check_attention_args(q: Tensor, k_cache: Tensor, v_cache: Tensor, meta: AttentionMetadata):
    """Assert the shapes, dtypes and strides both attention kernels rely on."""
    assert q.dim() == 3, f"q must be [T, Hq, D], got {tuple(q.shape)}"
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    assert k_cache.dim() == 4 and k_cache.shape[3] == head_dim, (
        f"k_cache must be [num_blocks, block_size, Hkv, {head_dim}], got {tuple(k_cache.shape)}"
    )
    assert v_cache.shape == k_cache.shape and v_cache.stride() == k_cache.stride(), (
        "k_cache and v_cache must have the same shape and strides"
    )
    num_kv_heads = k_cache.shape[2]
    assert num_q_heads % num_kv_heads == 0, (
        f"q heads ({num_q_heads}) must be a multiple of kv heads ({num_kv_heads})"
    )
    assert q.dtype == k_cache.dtype == v_cache.dtype, (
        f"q, k_cache, v_cache dtypes differ: {q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
    )
    assert q.stride(2) == 1 and k_cache.stride(3) == 1, "head_dim must be contiguous"
    assert head_dim >= 16, f"head_dim must be >= 16, got {head_dim}"
    num_seqs = meta.seq_lens.shape[0]
    assert meta.seq_lens.dtype == torch.int32 and meta.seq_lens.is_contiguous()
    assert meta.query_start_loc.shape == (num_seqs + 1,), (
        f"query_start_loc must be [{num_seqs + 1}], got {tuple(meta.query_start_loc.shape)}"
    )
    assert meta.query_start_loc.dtype == torch.int32 and meta.query_start_loc.is_contiguous()
    assert meta.block_tables.dim() == 2 and meta.block_tables.shape[0] == num_seqs
    assert meta.block_tables.dtype == torch.int32 and meta.block_tables.stride(1) == 1
    return num_seqs, num_q_heads, num_kv_heads, head_dim


def check_out(out: Tensor | None, q: Tensor) -> Tensor:
    """out, checked to match q (a new tensor when None)."""
    if out is None:
        return torch.empty_like(q)
    assert out.shape == q.shape and out.dtype == q.dtype, (
        f"out must be {tuple(q.shape)} {q.dtype}, got {tuple(out.shape)} {out.dtype}"
    )
    assert out.stride(2) == 1, "out must be contiguous in head_dim"
    return out


def dot_precision(dtype: torch.dtype) -> str:
    """Full float32 products for float32 inputs (tl.dot would use tf32 otherwise)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def decode_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    meta: AttentionMetadata,
    scale: float,
    config: DecodeConfig | None = None,
    num_splits: int | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Attention of one new token per sequence (q [B, Hq, D]) over its paged context.

    num_splits overrides the heuristic (tests use it to force both paths); out, if given,
    is written instead of a new tensor (a CUDA-graph buffer, or a poisoned one in tests).
    """
    config = config or DecodeConfig()
    num_seqs, num_q_heads, num_kv_heads, head_dim = check_attention_args(q, k_cache, v_cache, meta)
    assert meta.max_query_len == 1 and q.shape[0] == num_seqs, (
        f"decode needs one query token per sequence: q has {q.shape[0]} tokens for "
        f"{num_seqs} sequences, max_query_len {meta.max_query_len}"
    )
    out = check_out(out, q)
    if num_seqs == 0:
        return out
    if num_splits is None:
        num_splits = choose_num_splits(num_seqs, num_kv_heads, meta.max_seq_len, config)
    group = num_q_heads // num_kv_heads
    dim_pad = triton.next_power_of_2(head_dim)
    if num_splits > 1:
        partial = torch.empty(
            num_seqs, num_q_heads, num_splits, dim_pad, dtype=torch.float32, device=q.device
        )
        lse = torch.empty(num_seqs, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
    else:
        partial = lse = out  # unused by the single-split path
    _decode_split_kernel[(num_seqs * num_kv_heads * num_splits,)](
        q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
        out, partial, lse,
        scale * LOG2E, num_splits,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        meta.block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, DIM_PAD=dim_pad,
        BLOCK_SIZE=k_cache.shape[1], BLOCK_N=config.block_n,
        SINGLE_SPLIT=num_splits == 1, NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages, **launch_options(q.device),
    )  # fmt: skip
    if num_splits > 1:
        _decode_merge_kernel[(num_seqs, num_q_heads)](
            partial, lse, meta.query_start_loc, out,
            num_splits, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, DIM_PAD=dim_pad,
            SPLITS_PAD=triton.next_power_of_2(num_splits),
            NUM_Q_HEADS=num_q_heads, **launch_options(q.device),
        )  # fmt: skip
    return out
