"""What one forward step tells the attention ops about the batch (see docs/internals.md)."""

from dataclasses import dataclass

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
    max_seq_len: int  # max over b of seq_lens[b]

    @property
    def decode_only(self) -> bool:
        """True when every sequence has exactly one new token (a pure decode step)."""
        return self.max_query_len == 1

    @property
    def num_seqs(self) -> int:
        """B, the number of sequences in the batch."""
        return self.seq_lens.shape[0]
