"""CUDA graphs for decode steps and small steps with prompt tokens (CUDA only; the CPU
path never imports this module).

Decode: one graph per batch-size bucket (1, 2, 4, 8, 16, ... up to max_num_seqs, at most
MAX_GRAPH_BATCH). A decode step of n requests replays the smallest bucket >= n: its inputs
are copied into static buffers and the rows n..bucket are padding (token 0 at position 0,
slot -1 so nothing is written to the cache, seq_len 1 over the null block 0).

Steps with prompt tokens (a prefill, or a chunk beside decodes): one graph per token
bucket (16, 32, ... up to MAX_MIXED_GRAPH_TOKENS, then the larger buckets that timing at
start finds worth it: engine/prompt_graph_sizes.py). Eager, such a step costs the host a
Python launch of every kernel of every layer (~20-50 ms on Llama-3-8B, several times the
GPU's work for a short prompt); replayed, a few copies. The prefill kernel's grid is the
bucket's work-list capacity (AttentionMetadata.prefill_tiles), so one graph serves any
split of its tokens into sequences: tokens n..bucket belong to no sequence (slot -1), the
sequences past the step's are empty, and the work-list rows past its tiles are -1.

All graphs are captured largest first into one shared memory pool. Larger steps run
eagerly.
"""

from __future__ import annotations

import bisect
import logging
import math
import time

import torch
from torch import Tensor

from lodger.engine.prompt_graph_sizes import (
    LargeBucketTiming,
    choose_large_buckets,
    large_bucket_candidates,
    median_ms,
    override_limit,
)
from lodger.engine.step_inputs import TABLE_WIDTH_MULTIPLE, StepInputs, cdiv, round_up
from lodger.kernels.attention_metadata import AttentionMetadata, max_prefill_tiles

logger = logging.getLogger(__name__)

MAX_GRAPH_BATCH = 512
MIN_MIXED_GRAPH_TOKENS = 16
MAX_MIXED_GRAPH_TOKENS = 512


def batch_buckets(max_num_seqs: int) -> list[int]:
    """Powers of two below min(max_num_seqs, MAX_GRAPH_BATCH), then that limit itself."""
    limit = min(max_num_seqs, MAX_GRAPH_BATCH)
    buckets = [1 << i for i in range(limit.bit_length()) if (1 << i) < limit]
    return [*buckets, limit]


def token_buckets(max_num_batched_tokens: int) -> list[int]:
    """Token counts of the graphs for steps with prompt tokens: powers of two from
    MIN_MIXED_GRAPH_TOKENS up to MAX_MIXED_GRAPH_TOKENS and the step's token budget."""
    limit = min(max_num_batched_tokens, MAX_MIXED_GRAPH_TOKENS)
    buckets, size = [], MIN_MIXED_GRAPH_TOKENS
    while size < limit:
        buckets.append(size)
        size *= 2
    return [*buckets, limit] if limit >= 2 else []


class CudaGraphs:
    def __init__(
        self, model, kv_caches: list[tuple[Tensor, Tensor]], config, max_model_len: int,
        prefill_tile_queries: int = 0,
    ):
        """prefill_tile_queries: the prefill kernel's tile size (0: no graphs for steps
        with prompt tokens)."""
        self.model = model
        self.kv_caches = kv_caches
        self.buckets = batch_buckets(config.max_num_seqs)
        self.max_batch = self.buckets[-1]
        self.token_buckets = (token_buckets(config.max_num_batched_tokens)
                              if prefill_tile_queries else [])
        # larger token buckets that capture() may add (static inputs are sized for them)
        self.large_candidates = (
            large_bucket_candidates(MAX_MIXED_GRAPH_TOKENS, config.max_num_batched_tokens)
            if self.token_buckets and self.token_buckets[-1] == MAX_MIXED_GRAPH_TOKENS else [])
        self.large_bucket_timings: list[LargeBucketTiming] = []
        self.tile_queries = prefill_tile_queries
        self.max_model_len = max_model_len
        device = kv_caches[0][0].device
        # as wide as InputBuilder's widest table (its width is rounded to a multiple)
        max_blocks = round_up(cdiv(max_model_len, config.block_size), TABLE_WIDTH_MULTIPLE)
        mixed_sizes = [0, *self.token_buckets, *self.large_candidates]
        max_tokens = max([self.max_batch, *mixed_sizes])
        # sequences a step with prompt tokens may have: at most one per token
        self.max_mixed_seqs = min(config.max_num_seqs, max(mixed_sizes))
        max_seqs = max(self.max_batch, self.max_mixed_seqs)
        # Static inputs every graph reads; row i of a decode replay is the i-th request.
        self.input_ids = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((max_tokens,), -1, dtype=torch.int64, device=device)
        self.query_start_loc = torch.arange(max_seqs + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(max_seqs, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((max_seqs, max_blocks), dtype=torch.int32, device=device)
        # steps with prompt tokens: their own cu_seqlens (decode's stay 0, 1, 2, ...) and the
        # prefill kernel's work list, at the largest bucket's capacity
        self.mixed_query_start_loc = torch.zeros(self.max_mixed_seqs + 1, dtype=torch.int32,
                                                 device=device)
        max_tiles = max([0, *(self._tile_capacity(t) for t in mixed_sizes[1:])])
        self.prefill_tiles = torch.full((max_tiles, 2), -1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, Tensor] = {}  # bucket -> hidden states [bucket, H] it writes
        self.mixed_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.mixed_outputs: dict[int, Tensor] = {}  # token bucket -> hidden states [bucket, H]
        self.num_mixed_replays = 0  # steps with prompt tokens that replayed a graph
        self.num_large_replays = 0  # those of them over MAX_MIXED_GRAPH_TOKENS tokens
        self.pool = None
        self.memory_bytes = 0  # device memory capture() took

    def _tile_capacity(self, num_tokens: int) -> int:
        return max_prefill_tiles(num_tokens, self.max_mixed_seqs, self.tile_queries)

    def _meta(self, batch: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:batch],
            query_start_loc=self.query_start_loc[: batch + 1],
            seq_lens=self.seq_lens[:batch],
            block_tables=self.block_tables[:batch],
            max_query_len=1,
            max_seq_len=self.max_model_len,  # baked in: kernels must bound work by seq_lens
        )

    def _mixed_meta(self, num_tokens: int) -> AttentionMetadata:
        seqs = self.max_mixed_seqs
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:num_tokens],
            query_start_loc=self.mixed_query_start_loc,
            seq_lens=self.seq_lens[:seqs],
            block_tables=self.block_tables[:seqs],
            max_query_len=num_tokens,  # > 1: the prefill kernel, whatever the replay's split
            max_seq_len=self.max_model_len,
            prefill_tiles=self.prefill_tiles[: self._tile_capacity(num_tokens)],
            prefill_tile_queries=self.tile_queries,
        )

    def _forward(self, batch: int, mixed: bool = False) -> Tensor:
        meta = self._mixed_meta(batch) if mixed else self._meta(batch)
        return self.model(self.input_ids[:batch], self.positions[:batch], self.kv_caches, meta)

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        torch.cuda.synchronize()
        free_before, _ = torch.cuda.mem_get_info()
        self.token_buckets += self._choose_large_buckets()
        # largest first: its pool serves the rest
        order = sorted([(b, False) for b in self.buckets] + [(t, True) for t in self.token_buckets],
                       reverse=True)
        for size, mixed in order:
            graph, output = self._capture(size, mixed, self.pool)
            if self.pool is None:
                self.pool = graph.pool()
            graphs, outputs = ((self.mixed_graphs, self.mixed_outputs) if mixed
                               else (self.graphs, self.outputs))
            graphs[size], outputs[size] = graph, output
        torch.cuda.synchronize()
        # the shared pool, the graphs themselves and what warm-ups left cached: memory the
        # KV-cache sizing did not count (it comes out of 1 - gpu_memory_utilization)
        self.memory_bytes = free_before - torch.cuda.mem_get_info()[0]
        logger.info(
            "captured %d CUDA graphs (decode batches %s; steps with prompt tokens of up to "
            "%s tokens) in %.1f s, using %.0f MiB", len(order), self.buckets,
            self.token_buckets, time.perf_counter() - start, self.memory_bytes / 2**20,
        )
        for t in self.large_bucket_timings:
            logger.info(
                "prompt-step graph of %d tokens %s: replay %.2f ms against %.2f ms for an "
                "eager step of %d tokens", t.size, "kept" if t.kept else "not kept",
                t.replay_ms, t.eager_ms, t.smallest_step,
            )

    def _capture(self, size: int, mixed: bool, pool) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        """A graph of one forward of `size` (decode batch, or prompt-step tokens if mixed)
        over the static inputs, in `pool` (None: a pool of its own), and its output."""
        self._forward(size, mixed)  # warm up: compile and autotune outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            output = self._forward(size, mixed)
        return graph, output

    def _choose_large_buckets(self) -> list[int]:
        """The candidates above MAX_MIXED_GRAPH_TOKENS worth a graph on this model and card
        (prompt_graph_sizes): each one's replay timed on a throwaway graph of its size, the
        eager costs from eager forwards of the static inputs."""
        if not self.large_candidates:
            return []
        limit = override_limit()
        if limit is not None:
            return [size for size in self.large_candidates if size <= limit]
        self.large_bucket_timings = choose_large_buckets(
            self.large_candidates, self.token_buckets[-1], self._throwaway_replay_ms,
            lambda n: median_ms(lambda: self._forward(n, mixed=True)),
        )  # fmt: skip
        return [t.size for t in self.large_bucket_timings if t.kept]

    def _throwaway_replay_ms(self, size: int) -> float:
        """Median replay time of a graph of `size` prompt tokens, captured in its own pool
        and given back: the kept buckets are captured later, largest first, in the shared
        pool."""
        probe = None
        try:
            probe, _ = self._capture(size, mixed=True, pool=None)
            return median_ms(probe.replay)
        except torch.cuda.OutOfMemoryError:
            # what gpu_memory_utilization leaves free does not hold this bucket's
            # activations beside the KV cache: not kept, and the search ends here
            logger.warning("no memory for a prompt-step graph of %d tokens: not kept", size)
            return math.inf
        finally:
            del probe
            torch.cuda.empty_cache()

    def can_run(self, inputs: StepInputs) -> bool:
        """Decode-only batches that fit the largest bucket; other steps that fit the largest
        token bucket and carry the prefill kernel's work list."""
        meta = inputs.meta
        if meta.decode_only:
            return inputs.num_tokens <= self.max_batch
        return (
            bool(self.token_buckets) and inputs.num_tokens <= self.token_buckets[-1]
            and meta.num_seqs <= self.max_mixed_seqs and meta.prefill_tiles is not None
            and meta.prefill_tile_queries == self.tile_queries
        )  # fmt: skip

    def run(self, inputs: StepInputs) -> Tensor:
        """Replay the graph for this step; returns hidden states [n, H] (valid until the
        next replay)."""
        if not inputs.meta.decode_only:
            return self._run_mixed(inputs)
        n = inputs.num_tokens
        batch = self.buckets[bisect.bisect_left(self.buckets, n)]
        meta = inputs.meta
        self._copy_tokens(inputs, batch)
        self._copy_tables(meta)
        if batch > n:  # padding rows: attend to one token of block 0
            self.seq_lens[n:batch].fill_(1)
            self.block_tables[n:batch].zero_()
        self.graphs[batch].replay()
        return self.outputs[batch][:n]

    def _run_mixed(self, inputs: StepInputs) -> Tensor:
        n, meta = inputs.num_tokens, inputs.meta
        size = self.token_buckets[bisect.bisect_left(self.token_buckets, n)]
        num_seqs, num_tiles = meta.num_seqs, meta.prefill_tiles.shape[0]
        assert num_tiles <= self._tile_capacity(size)
        self._copy_tokens(inputs, size)
        self._copy_tables(meta)
        self.mixed_query_start_loc[: num_seqs + 1].copy_(meta.query_start_loc)
        self.mixed_query_start_loc[num_seqs + 1 :].fill_(n)  # the sequences past the step's
        self.prefill_tiles[:num_tiles].copy_(meta.prefill_tiles)
        self.prefill_tiles[num_tiles : self._tile_capacity(size)].fill_(-1)
        self.mixed_graphs[size].replay()
        self.num_mixed_replays += 1
        self.num_large_replays += int(n > MAX_MIXED_GRAPH_TOKENS)
        return self.mixed_outputs[size][:n]

    def _copy_tokens(self, inputs: StepInputs, size: int) -> None:
        """The step's n tokens into the static inputs; tokens n..size are padding (token 0
        at position 0, slot -1: nothing is written to the cache)."""
        n = inputs.num_tokens
        self.input_ids[:n].copy_(inputs.input_ids)
        self.positions[:n].copy_(inputs.positions)
        self.slot_mapping[:n].copy_(inputs.meta.slot_mapping)
        if size > n:
            self.input_ids[n:size].zero_()
            self.positions[n:size].zero_()
            self.slot_mapping[n:size].fill_(-1)

    def _copy_tables(self, meta: AttentionMetadata) -> None:
        num_seqs, width = meta.num_seqs, meta.block_tables.shape[1]
        self.seq_lens[:num_seqs].copy_(meta.seq_lens)
        self.block_tables[:num_seqs, :width].copy_(meta.block_tables)
        self.block_tables[:num_seqs, width:].zero_()
