"""CUDA graphs for decode-only steps (CUDA only; the CPU path never imports this module).

One graph per batch-size bucket (1, 2, 4, 8, 16, ... up to max_num_seqs, at most
MAX_GRAPH_BATCH), captured largest first into one shared memory pool. A decode step of n
requests replays the smallest bucket >= n: its inputs are copied into static buffers and
the rows n..bucket are padding (token 0 at position 0, slot -1 so nothing is written to the
cache, seq_len 1 over the null block 0). Prefill or mixed steps and batches above the
largest bucket run eagerly.
"""

from __future__ import annotations

import bisect
import logging
import time

import torch
from torch import Tensor

from lodger.engine.step_inputs import TABLE_WIDTH_MULTIPLE, StepInputs, cdiv, round_up
from lodger.kernels.attention_metadata import AttentionMetadata

logger = logging.getLogger(__name__)

MAX_GRAPH_BATCH = 512


def batch_buckets(max_num_seqs: int) -> list[int]:
    """Powers of two below min(max_num_seqs, MAX_GRAPH_BATCH), then that limit itself."""
    limit = min(max_num_seqs, MAX_GRAPH_BATCH)
    buckets = [1 << i for i in range(limit.bit_length()) if (1 << i) < limit]
    return [*buckets, limit]


class CudaGraphs:
    def __init__(self, model, kv_caches: list[tuple[Tensor, Tensor]], config, max_model_len: int):
        self.model = model
        self.kv_caches = kv_caches
        self.buckets = batch_buckets(config.max_num_seqs)
        self.max_batch = self.buckets[-1]
        self.max_model_len = max_model_len
        device = kv_caches[0][0].device
        # as wide as InputBuilder's widest table (its width is rounded to a multiple)
        max_blocks = round_up(cdiv(max_model_len, config.block_size), TABLE_WIDTH_MULTIPLE)
        n = self.max_batch
        # Static inputs every graph reads; row i of a replay is the i-th request.
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((n, max_blocks), dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, Tensor] = {}  # bucket -> hidden states [bucket, H] it writes
        self.pool = None

    def _meta(self, batch: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:batch],
            query_start_loc=self.query_start_loc[: batch + 1],
            seq_lens=self.seq_lens[:batch],
            block_tables=self.block_tables[:batch],
            max_query_len=1,
            max_seq_len=self.max_model_len,  # baked in: kernels must bound work by seq_lens
        )

    def _forward(self, batch: int) -> Tensor:
        return self.model(
            self.input_ids[:batch], self.positions[:batch], self.kv_caches, self._meta(batch)
        )

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        for batch in reversed(self.buckets):  # largest first: its pool serves the rest
            self._forward(batch)  # warm up: compile and autotune outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                self.outputs[batch] = self._forward(batch)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[batch] = graph
        torch.cuda.synchronize()
        logger.info(
            "captured %d CUDA graphs (decode batches %s) in %.1f s", len(self.graphs),
            self.buckets, time.perf_counter() - start,
        )

    def can_run(self, inputs: StepInputs) -> bool:
        """Decode-only batches that fit the largest bucket."""
        return inputs.meta.decode_only and inputs.num_tokens <= self.max_batch

    def run(self, inputs: StepInputs) -> Tensor:
        """Replay the bucket for this decode batch; returns hidden states [n, H] (valid
        until the next replay)."""
        n = inputs.num_tokens
        batch = self.buckets[bisect.bisect_left(self.buckets, n)]
        meta = inputs.meta
        width = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(inputs.input_ids)
        self.positions[:n].copy_(inputs.positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.seq_lens[:n].copy_(meta.seq_lens)
        self.block_tables[:n, :width].copy_(meta.block_tables)
        self.block_tables[:n, width:].zero_()
        if batch > n:  # padding rows: write nothing, attend to one token of block 0
            self.input_ids[n:batch].zero_()
            self.positions[n:batch].zero_()
            self.slot_mapping[n:batch].fill_(-1)
            self.seq_lens[n:batch].fill_(1)
            self.block_tables[n:batch].zero_()
        self.graphs[batch].replay()
        return self.outputs[batch][:n]
