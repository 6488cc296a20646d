"""What one forward step tells the attention ops about the batch (see docs/internals.md)."""

from dataclasses import dataclass

import numpy as np
from torch import Tensor


@dataclass(slots=True)
class AttentionMetadata:
    """The batch layout of one step: B sequences, T new tokens in total.

    Sequence b owns new tokens query_start_loc[b]:query_start_loc[b + 1]; they sit at the
    last positions of its context of seq_lens[b] tokens, whose K/V live in the paged cache
    blocks listed by block_tables[b].
    """

    slot_mapping: Tensor  # [T] int64, flat cache slot of each new token; -1 = skip (padding)
    query_start_loc: Tensor  # [B + 1] int32, cu_seqlens of the new tokens per sequence
    seq_lens: Tensor  # [B] int32, context length after this step (cached + new)
    block_tables: Tensor  # [B, max_blocks] int32, block ids in order, padded with 0
    max_query_len: int  # max over b of the number of new tokens of sequence b
    max_seq_len: int  # max over b of seq_lens[b], or a bound on it (a CUDA graph's)
    # The prefill kernel's work list (see plan_prefill_tiles): [P, 2] int32 rows (sequence,
    # tile of prefill_tile_queries of its new tokens); rows with sequence -1 do nothing.
    # None: the kernel plans for itself (one device -> host copy of query_start_loc).
    prefill_tiles: Tensor | None = None
    prefill_tile_queries: int = 0

    @property
    def decode_only(self) -> bool:
        """True when every sequence has exactly one new token (a pure decode step)."""
        return self.max_query_len == 1

    @property
    def num_seqs(self) -> int:
        """B, the number of sequences in the batch."""
        return self.seq_lens.shape[0]


def _tiles_per_sequence(query_lens: np.ndarray, tile_queries: int) -> np.ndarray:
    return (query_lens + tile_queries - 1) // tile_queries


def num_prefill_tiles(query_lens: np.ndarray, tile_queries: int) -> int:
    """Rows plan_prefill_tiles writes for these per-sequence new-token counts."""
    return int(_tiles_per_sequence(query_lens, tile_queries).sum())


def max_prefill_tiles(num_tokens: int, num_seqs: int, tile_queries: int) -> int:
    """The most rows any batch of num_tokens new tokens in at most num_seqs sequences
    needs: each sequence's last tile may be partial."""
    return num_tokens // tile_queries + min(num_seqs, num_tokens)


def plan_prefill_tiles(query_lens: np.ndarray, tile_queries: int, out: np.ndarray) -> None:
    """Write the prefill kernel's work list into out [P, 2] int32 (P from
    num_prefill_tiles): one row (sequence b, tile t) per tile_queries new tokens of b, the
    last (longest-running, causal) tile of each sequence first."""
    tiles = _tiles_per_sequence(query_lens, tile_queries)
    assert out.shape == (int(tiles.sum()), 2), (out.shape, int(tiles.sum()))
    out[:, 0] = np.repeat(np.arange(len(query_lens)), tiles)
    ends = np.cumsum(tiles)  # row after each sequence's tiles
    out[:, 1] = np.repeat(ends, tiles) - 1 - np.arange(len(out))
