"""Builders of random paged-attention batches shared by the kernel tests."""

import torch

from lodger.kernels.attention_metadata import AttentionMetadata
from lodger.kernels.reference import relative_error

__all__ = ["dense_causal_attention", "make_batch", "relative_error"]


def make_batch(
    query_lens: list[int],
    seq_lens: list[int],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: str = "cpu",
    generator: torch.Generator | None = None,
):
    """A batch whose sequences own shuffled, disjoint cache blocks filled with random K/V.

    Returns (q [T, Hq, D], k_cache, v_cache, meta). Spare blocks hold random values too, so
    reading a wrong block changes the result.
    """
    assert len(query_lens) == len(seq_lens)
    assert all(0 < q <= s for q, s in zip(query_lens, seq_lens, strict=True))
    blocks_per_seq = [(s + block_size - 1) // block_size for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    perm = torch.randperm(num_blocks, generator=generator)
    max_blocks = max(blocks_per_seq)
    block_tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    slots = []
    used = 0
    for b, n in enumerate(blocks_per_seq):
        block_tables[b, :n] = perm[used : used + n].to(torch.int32)
        used += n
        for p in range(seq_lens[b] - query_lens[b], seq_lens[b]):
            slots.append(int(block_tables[b, p // block_size]) * block_size + p % block_size)
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(cache_shape, generator=generator).to(dtype)
    v_cache = torch.randn(cache_shape, generator=generator).to(dtype)
    q = torch.randn(sum(query_lens), num_heads, head_dim, generator=generator).to(dtype)
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
    )
    return q.to(device), k_cache.to(device), v_cache.to(device), meta


def dense_causal_attention(q, k, v, scale):
    """Plain attention of one sequence, q [L, Hq, D] at the last L of k/v [S, Hkv, D]."""
    query_len, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    k = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, S, D]
    v = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = q.float().transpose(0, 1) @ k.transpose(1, 2) * scale  # [Hq, L, S]
    mask = torch.ones(query_len, seq_len, dtype=torch.bool).tril(seq_len - query_len)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1)  # [L, Hq, D]


