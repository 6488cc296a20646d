"""Build one step's model inputs from a SchedulerOutput, vectorised.

Per request there is one short Python pass (read its counters, take its new token ids,
copy block ids the runner has not seen yet); everything per token is numpy. All arrays
are written into one host byte buffer (pinned on CUDA) and sent to the device with a
single copy; the device tensors are views of that one allocation.

Block tables persist across steps: each live request owns a row of a host array and only
blocks appended since the last step are copied in. A request whose blocks may have been
replaced (preempted, or its computed tokens not where the last step left them) has its
row rewritten.

Async scheduling: a request's last new token may be one the previous step is still
sampling (not yet in all_token_ids). Its input id is written as 0 and listed in
`deferred_positions` / `deferred_sources`: the runner copies it on the device from the
previous step's sampled ids before the forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lodger.kernels.attention_metadata import (
    AttentionMetadata,
    max_prefill_tiles,
    num_prefill_tiles,
    plan_prefill_tiles,
)


@dataclass(slots=True)
class StepInputs:
    input_ids: Tensor  # [T] int64, the new tokens of every scheduled request, in batch order
    positions: Tensor  # [T] int64, each new token's position in its sequence
    meta: AttentionMetadata  # slot mapping, query_start_loc, seq_lens, block tables
    logits_indices: Tensor  # [N] int64, rows of the hidden states whose next token is sampled
    sample_rows: list[int]  # [N] batch indices of the requests that sample this step
    num_tokens: int  # T
    # [D] int64: input_ids entries still being sampled by the previous step, and for each
    # its row in that step's sampled ids; D = 0 under synchronous scheduling
    deferred_positions: Tensor
    deferred_sources: Tensor
    num_deferred: int  # D


@dataclass(slots=True)
class _Row:
    index: int  # row of InputBuilder.block_table owned by the request
    num_blocks: int  # leading block ids of the request copied into the row
    num_preemptions: int  # the request's count when the row was last written
    next_num_computed: int  # num_computed_tokens expected at its next schedule


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, multiple: int) -> int:
    return cdiv(a, multiple) * multiple


# The host buffer holds, in order: input ids [T], positions [T], slot mapping [T], logits
# indices [N], deferred positions [D], deferred sources [D] (int64), query_start_loc
# [B + 1], seq_lens [B], block tables [B, W], the prefill kernel's work list [P, 2] (int32;
# P = 0 in decode-only steps, which the decode kernel runs).
# Each array starts ARRAY_ALIGNMENT bytes aligned, and W is a multiple of
# TABLE_WIDTH_MULTIPLE: Triton specialises kernels on the 16-byte alignment of pointers and
# on integers divisible by 16 (the table's row stride), so alignments that moved with the
# batch's shape would compile a new kernel variant in the middle of serving.
BUFFER_DTYPES = (np.int64,) * 6 + (np.int32,) * 4
TORCH_DTYPES = {np.int64: torch.int64, np.int32: torch.int32}
ARRAY_ALIGNMENT = 64
TABLE_WIDTH_MULTIPLE = 16


def buffer_layout(
    num_tokens: int, num_reqs: int, num_samples: int, num_deferred: int, width: int,
    num_tiles: int = 0,
) -> tuple[list[tuple[int, int]], int]:
    """Byte spans (start, end) of the host buffer's arrays, and the bytes used in all."""
    lengths = (num_tokens, num_tokens, num_tokens, num_samples, num_deferred, num_deferred,
               num_reqs + 1, num_reqs, num_reqs * width, 2 * num_tiles)
    spans, end = [], 0
    for length, dtype in zip(lengths, BUFFER_DTYPES, strict=True):
        start = round_up(end, ARRAY_ALIGNMENT)
        end = start + length * np.dtype(dtype).itemsize
        spans.append((start, end))
    return spans, end


class InputBuilder:
    """Keeps per-request block-table rows and builds StepInputs for each step.

    prefill_tile_queries > 0: steps with prompt tokens carry the Triton prefill kernel's
    work list for tiles of that many queries (AttentionMetadata.prefill_tiles)."""

    def __init__(
        self, block_size: int, max_model_len: int, max_num_seqs: int,
        max_num_batched_tokens: int, device: torch.device, prefill_tile_queries: int = 0,
    ):
        self.block_size = block_size
        self.prefill_tile_queries = prefill_tile_queries
        self.device = device
        self.max_blocks_per_seq = cdiv(max_model_len, block_size)
        self.max_num_batched_tokens = max_num_batched_tokens
        # the table's width stays a multiple of TABLE_WIDTH_MULTIPLE (see _build)
        table_width = round_up(self.max_blocks_per_seq, TABLE_WIDTH_MULTIPLE)
        self.block_table = np.zeros((max_num_seqs, table_width), dtype=np.int32)
        self.rows: dict[str, _Row] = {}
        self.row_num_blocks = np.zeros(max_num_seqs, dtype=np.int64)  # block ids in each row
        self.free_rows = list(range(max_num_seqs - 1, -1, -1))
        # int64: 3 per token + 3 per request; int32: block table + query_start_loc + seq_lens
        # + the prefill work list
        max_tiles = (max_prefill_tiles(max_num_batched_tokens, max_num_seqs,
                                       prefill_tile_queries) if prefill_tile_queries else 0)
        _, max_bytes = buffer_layout(max_num_batched_tokens, max_num_seqs, max_num_seqs,
                                     max_num_seqs, table_width, max_tiles)
        pin = device.type == "cuda"
        self.host_tensor = torch.empty(max_bytes, dtype=torch.uint8, pin_memory=pin)
        self.host_buffer = self.host_tensor.numpy()  # the same memory, written with numpy
        # CUDA: recorded after each host->device copy; the host buffer is rewritten only
        # once the previous copy has run (a step without sampling has no other sync).
        self.copy_done = None

    def drop(self, request_ids) -> None:
        """Forget finished requests; their rows are reused."""
        for request_id in request_ids:
            row = self.rows.pop(request_id, None)
            if row is not None:
                self.free_rows.append(row.index)

    def _new_row(self, request_id: str) -> _Row:
        if not self.free_rows:  # preempted requests keep their rows: grow
            old = self.block_table
            self.block_table = np.zeros((2 * old.shape[0], old.shape[1]), dtype=np.int32)
            self.block_table[: old.shape[0]] = old
            self.row_num_blocks = np.concatenate([self.row_num_blocks, self.row_num_blocks * 0])
            self.free_rows = list(range(self.block_table.shape[0] - 1, old.shape[0] - 1, -1))
        row = _Row(self.free_rows.pop(), 0, -1, -1)
        self.rows[request_id] = row
        return row

    def _sync_row(self, request, row: _Row | None, num_computed: int) -> _Row:
        """Copy the request's new block ids into its row (all of them if it was reset)."""
        if row is None:
            row = self._new_row(request.request_id)
        block_ids = request.block_ids
        num_blocks = len(block_ids)
        if (
            row.num_preemptions != request.num_preemptions
            or row.next_num_computed != num_computed
            or num_blocks < row.num_blocks
        ):
            self.block_table[row.index, : row.num_blocks] = 0
            row.num_blocks = 0
            row.num_preemptions = request.num_preemptions
        if num_blocks > row.num_blocks:
            assert num_blocks <= self.max_blocks_per_seq, (
                f"request {request.request_id!r} has {num_blocks} blocks, more than "
                f"max_model_len allows ({self.max_blocks_per_seq})"
            )
            self.block_table[row.index, row.num_blocks : num_blocks] = block_ids[row.num_blocks :]
            row.num_blocks = num_blocks
        self.row_num_blocks[row.index] = num_blocks
        return row

    def prepare(
        self, scheduled: list, num_scheduled_tokens: list[int], num_computed: list[int],
        samples: list[bool], previous_rows: dict[str, int] | None = None,
    ) -> StepInputs:
        """StepInputs for `scheduled` requests computing `num_scheduled_tokens` each from
        position `num_computed`, sampling where `samples`. `previous_rows` maps the request
        ids the previous (still running) step samples to their rows in its sampled ids:
        a token not yet in all_token_ids is taken from there."""
        assert scheduled and len(num_scheduled_tokens) == len(scheduled) == len(num_computed)
        token_ids: list[int] = []
        row_indices: list[int] = []
        deferred_positions: list[int] = []
        deferred_sources: list[int] = []
        rows_get = self.rows.get
        add_token, add_tokens, add_row = token_ids.append, token_ids.extend, row_indices.append
        for request, num_new, computed in zip(
            scheduled, num_scheduled_tokens, num_computed, strict=True
        ):
            row = rows_get(request.request_id)
            if (  # anything but a plain continuation with the blocks it had: sync the row
                row is None
                or row.next_num_computed != computed
                or row.num_blocks != len(request.block_ids)
                or row.num_preemptions != request.num_preemptions
            ):
                row = self._sync_row(request, row, computed)
            end = computed + num_new
            row.next_num_computed = end
            add_row(row.index)
            all_token_ids = request.all_token_ids
            if end > len(all_token_ids):  # the last one is still being sampled
                assert end == len(all_token_ids) + 1 and previous_rows is not None, (
                    f"request {request.request_id!r} needs {end} tokens but has "
                    f"{len(all_token_ids)} and none is being sampled"
                )
                add_tokens(all_token_ids[computed:])
                deferred_positions.append(len(token_ids))
                deferred_sources.append(previous_rows[request.request_id])
                add_token(0)
            elif num_new == 1:
                add_token(all_token_ids[computed])
            else:
                add_tokens(all_token_ids[computed:end])
        return self._build(
            token_ids, row_indices, num_computed, num_scheduled_tokens, samples,
            (deferred_positions, deferred_sources),
        )

    def _build(
        self, token_ids, row_indices, num_computed, num_scheduled_tokens, samples, deferred
    ) -> StepInputs:
        num_reqs, total = len(row_indices), len(token_ids)
        assert total <= self.max_num_batched_tokens, (
            f"{total} tokens scheduled, more than max_num_batched_tokens "
            f"{self.max_num_batched_tokens}"
        )
        num_new = np.array(num_scheduled_tokens, dtype=np.int64)
        computed = np.array(num_computed, dtype=np.int64)
        row_indices = np.array(row_indices, dtype=np.int64)
        seq_lens = computed + num_new
        covered = self.row_num_blocks[row_indices] * self.block_size - seq_lens
        assert num_new.min() > 0 and covered.min() >= 0, (
            "each scheduled request computes at least one token and has the blocks for them"
        )
        sample_rows = np.flatnonzero(np.array(samples, dtype=bool))
        max_seq_len = int(seq_lens.max())
        width = round_up(cdiv(max_seq_len, self.block_size), TABLE_WIDTH_MULTIPLE)
        num_samples = len(sample_rows)
        num_deferred = len(deferred[0])
        tile_queries = self.prefill_tile_queries if total > num_reqs else 0
        num_tiles = num_prefill_tiles(num_new, tile_queries) if tile_queries else 0

        spans, num_bytes = buffer_layout(total, num_reqs, num_samples, num_deferred, width,
                                         num_tiles)
        assert num_bytes <= len(self.host_buffer), (
            f"{num_reqs} requests scheduled, more than max_num_seqs allows"
        )
        if self.copy_done is not None:
            self.copy_done.synchronize()
        host = [self.host_buffer[start:end].view(dtype)
                for (start, end), dtype in zip(spans, BUFFER_DTYPES, strict=True)]
        (ids, positions, slots, logits_indices, deferred_positions, deferred_sources,
         query_start_loc, seq_lens_out, tables, tiles) = host
        tables = tables.reshape(num_reqs, width)
        if tile_queries:
            plan_prefill_tiles(num_new, tile_queries, tiles.reshape(num_tiles, 2))
        deferred_positions[:] = deferred[0]
        deferred_sources[:] = deferred[1]

        ids[:] = token_ids
        query_start_loc[0] = 0
        np.cumsum(num_new, out=query_start_loc[1:])
        seq_lens_out[:] = seq_lens
        np.take(self.block_table[:, :width], row_indices, axis=0, out=tables)
        if total == num_reqs:  # decode only: one token per request
            positions[:] = computed
            request_of_token = np.arange(num_reqs)
        else:
            starts = query_start_loc[:-1].astype(np.int64)
            request_of_token = np.repeat(np.arange(num_reqs), num_new)
            positions[:] = np.arange(total) - np.repeat(starts - computed, num_new)
        block_index = positions // self.block_size
        slots[:] = tables[request_of_token, block_index]
        slots *= self.block_size
        slots += positions - block_index * self.block_size
        logits_indices[:] = query_start_loc[1:][sample_rows] - 1

        device_buffer = self.host_tensor[:num_bytes].to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self.copy_done = torch.cuda.Event()
            self.copy_done.record()
        device = [device_buffer[start:end].view(TORCH_DTYPES[dtype])
                  for (start, end), dtype in zip(spans, BUFFER_DTYPES, strict=True)]
        meta = AttentionMetadata(
            slot_mapping=device[2],
            query_start_loc=device[6],
            seq_lens=device[7],
            block_tables=device[8].view(num_reqs, width),
            max_query_len=int(num_new.max()),
            max_seq_len=max_seq_len,
            prefill_tiles=device[9].view(num_tiles, 2) if tile_queries else None,
            prefill_tile_queries=tile_queries,
        )
        return StepInputs(
            input_ids=device[0],
            positions=device[1],
            meta=meta,
            logits_indices=device[3],
            sample_rows=sample_rows.tolist(),
            num_tokens=total,
            deferred_positions=device[4],
            deferred_sources=device[5],
            num_deferred=num_deferred,
        )
