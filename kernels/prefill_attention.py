"""Triton paged prefill/extend attention: variable-length query chunks over the paged cache.

Torch reference: lodger.kernels.reference.paged_attention.

The new tokens' K/V are already in the cache (write_kv_cache runs first), so every key is
read through the block table. Query i of sequence b sits at position
seq_len - query_len + i and attends to positions <= its own. Program (p, kv_head) takes
row p of the step's work list (meta.prefill_tiles: sequence b, tile t; see
attention_metadata.plan_prefill_tiles) and stacks the GROUP q heads of kv_head over query
tokens t * Q .. t * Q + Q - 1 of b (Q = queries_per_tile) into one tile of rows (row r =
query r // GROUP, head r % GROUP), so each K/V tile is loaded once for the whole group.
Mixed batches (decodes beside long chunks) run in one launch of exactly the tiles they
have. The grid depends only on the work list's length, never on the batch's shape: a CUDA
graph captures it at its capacity, and rows past the step's tiles (sequence -1) exit.
"""

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from lodger.kernels.attention_metadata import (
    AttentionMetadata,
    num_prefill_tiles,
    plan_prefill_tiles,
)
from lodger.kernels.decode_attention import (
    LOG2E,
    attend_paged_tile,
    check_attention_args,
    check_out,
    dot_precision,
)
from lodger.kernels.pdl import await_prior_kernel, launch_options


@dataclass(slots=True)
class PrefillConfig:
    """Launch shape; defaults are the best of bench/kernels.py --sweep on an H100."""

    block_rows: int = 64  # query rows (tokens x heads of one kv group) per program
    block_n: int = 64  # context tokens per tile
    num_warps: int = 4
    num_stages: int = 3


def _block_rows(group: int, config: PrefillConfig) -> int:
    return max(config.block_rows, triton.next_power_of_2(group))


def queries_per_tile(
    num_q_heads: int, num_kv_heads: int, config: PrefillConfig | None = None
) -> int:
    """Query tokens per program for this head layout: the work list's tile size
    (AttentionMetadata.prefill_tile_queries) that the launch with `config` expects."""
    group = num_q_heads // num_kv_heads
    return _block_rows(group, config or PrefillConfig()) // group


def attach_work_list(
    meta: AttentionMetadata, num_q_heads: int, num_kv_heads: int,
    config: PrefillConfig | None = None,
) -> None:
    """Plan meta's work list for launches with `config` from its query_start_loc (waits for
    the device). The engine's step inputs carry one already; tests and benchmarks call this,
    and the launch does when meta has none for its tile size."""
    tile_queries = queries_per_tile(num_q_heads, num_kv_heads, config)
    query_lens = np.diff(meta.query_start_loc.cpu().numpy().astype(np.int64))
    tiles = np.empty((num_prefill_tiles(query_lens, tile_queries), 2), dtype=np.int32)
    plan_prefill_tiles(query_lens, tile_queries, tiles)
    meta.prefill_tiles = torch.from_numpy(tiles).to(meta.query_start_loc.device)
    meta.prefill_tile_queries = tile_queries


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_ptr,
    tiles_ptr, out_ptr,
    scale_log2,
    stride_qt, stride_qh,
    stride_cache_block, stride_cache_slot, stride_cache_head,
    stride_table,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    await_prior_kernel(USE_PDL)
    work = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    seq = tl.load(tiles_ptr + 2 * work)
    if seq < 0:  # past this step's tiles (a CUDA graph's grid is its capacity)
        return
    tile = tl.load(tiles_ptr + 2 * work + 1)
    queries_per_tile = BLOCK_ROWS // GROUP
    query_start = tl.load(query_start_ptr + seq)
    query_len = tl.load(query_start_ptr + seq + 1) - query_start
    first_query = tile * queries_per_tile  # < query_len: a planned tile holds queries
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - query_len  # tokens cached before this step's chunk

    rows = tl.arange(0, BLOCK_ROWS)
    query_index = first_query + rows // GROUP
    row_mask = (rows < queries_per_tile * GROUP) & (query_index < query_len)
    heads = kv_head * GROUP + rows % GROUP
    tokens = (query_start + query_index).to(tl.int64)
    query_pos = context_len + query_index  # position of each row's query in its sequence
    dims = tl.arange(0, DIM_PAD)
    dim_mask = dims < HEAD_DIM
    q_mask = row_mask[:, None] & dim_mask[None, :]
    q = tl.load(
        q_ptr + tokens[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :],
        mask=q_mask, other=0.0,
    )  # fmt: skip

    m = tl.full([BLOCK_ROWS], -1.0e30, tl.float32)
    denom = tl.zeros([BLOCK_ROWS], tl.float32)
    acc = tl.zeros([BLOCK_ROWS, DIM_PAD], tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_table
    head_offset = kv_head * stride_cache_head
    last_query = tl.minimum(first_query + queries_per_tile, query_len) - 1
    end = context_len + last_query + 1  # keys past the tile's last query are never seen
    for tile_start in range(0, end, BLOCK_N):
        positions = tile_start + tl.arange(0, BLOCK_N)
        valid = positions < end
        m, denom, acc = attend_paged_tile(
            q, k_cache_ptr, v_cache_ptr, table, positions, valid, query_pos, head_offset, dims,
            dim_mask, m, denom, acc, scale_log2, stride_cache_block, stride_cache_slot,
            BLOCK_SIZE, CAUSAL=True, DOT_PRECISION=DOT_PRECISION,
        )  # fmt: skip

    out = acc / tl.where(denom > 0, denom, 1.0)[:, None]  # 0 only for padding rows
    out_ptrs = out_ptr + tokens[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=q_mask)


def prefill_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    meta: AttentionMetadata,
    scale: float,
    config: PrefillConfig | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Causal attention of q [T, Hq, D] (sequence b's tokens at query_start_loc[b]:[b+1])
    over each sequence's paged context; any mix of query lengths in one launch. out, if
    given, is written instead of a new tensor."""
    config = config or PrefillConfig()
    num_seqs, num_q_heads, num_kv_heads, head_dim = check_attention_args(q, k_cache, v_cache, meta)
    group = num_q_heads // num_kv_heads
    block_rows = _block_rows(group, config)
    out = check_out(out, q)
    if num_seqs == 0 or q.shape[0] == 0:
        return out
    if (meta.prefill_tiles is None
            or meta.prefill_tile_queries != queries_per_tile(num_q_heads, num_kv_heads, config)):
        attach_work_list(meta, num_q_heads, num_kv_heads, config)
    tiles = meta.prefill_tiles
    assert tiles.dim() == 2 and tiles.shape[1] == 2 and tiles.dtype == torch.int32
    assert tiles.is_contiguous() and tiles.device == q.device
    if tiles.shape[0] == 0:
        return out
    _prefill_kernel[(tiles.shape[0], num_kv_heads)](
        q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
        tiles, out,
        scale * LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        meta.block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, HEAD_DIM=head_dim, DIM_PAD=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=k_cache.shape[1], BLOCK_ROWS=block_rows, BLOCK_N=config.block_n,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages, **launch_options(q.device),
    )  # fmt: skip
    return out
