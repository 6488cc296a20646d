"""ModelRunner: owns the model, the KV cache and the sampler; runs one step per call.

`launch(SchedulerOutput, previous)` builds the step's inputs (engine/step_inputs.py), runs
the decoder over all new tokens, computes logits only for the requests that sample this
step (their last scheduled token), samples, and queues one copy of the results to the host;
`PendingStep.result()` waits for that copy alone, so the host may launch the next step
first (async scheduling: `previous` is the step still running, whose sampled ids on the
device feed the new step's inputs). `execute(out)` is launch + result.
On CUDA, decode steps and steps with prompt tokens up to the largest token bucket replay
CUDA graphs (engine/cuda_graphs.py) unless `enforce_eager`; the CPU path never imports
that module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from lodger.engine.config import EngineConfig
from lodger.engine.loader import load_model
from lodger.engine.model_config import ModelConfig
from lodger.engine.outputs import Logprob, SampleLogprobs
from lodger.engine.sampler import Sampler, SamplerOutput, SamplingMetadata, TokenIdCache
from lodger.engine.step_inputs import InputBuilder, StepInputs, cdiv
from lodger.kernels import ops

logger = logging.getLogger(__name__)

# CPU: the KV cache takes at most this many bytes unless num_kv_blocks is given.
CPU_KV_CACHE_BYTES = 1 << 30


@dataclass(slots=True)
class ModelRunnerOutput:
    sampled_token_ids: list[int | None]  # parallel to out.scheduled; None mid-prompt
    logprobs: list[SampleLogprobs | None]  # parallel; None where not asked or not sampled


@dataclass(slots=True)
class PendingStep:
    """A launched step whose sampled tokens may still be on their way."""

    num_reqs: int  # requests in the step
    sample_rows: list[int]  # batch rows that sample
    requests: list  # the requests of those rows
    sampled: SamplerOutput | None  # device tensors; None when no row samples
    # the host copy of the sampled ids (int64 [N]) or, with logprobs, of the packed rows
    # (float64 [N, 3 + 2K], see _pack); on CUDA pinned, written by a non-blocking copy
    host_values: Tensor | None = None
    copied: object = None  # CUDA: the event recorded after that copy
    # pinned host sources of the sampling metadata's non-blocking copies, kept until result()
    host_buffers: list | None = None
    # some sampled row has a penalty: the next step's penalties need this step's exact ids
    has_penalties: bool = False

    def sampled_rows(self) -> dict[str, int]:
        """Request id -> its row in `sampled.token_ids`."""
        return {request.request_id: i for i, request in enumerate(self.requests)}

    def result(self) -> ModelRunnerOutput:
        """Wait for this step's copy to the host (not for steps launched after it)."""
        token_ids: list[int | None] = [None] * self.num_reqs
        logprobs: list[SampleLogprobs | None] = [None] * self.num_reqs
        if self.sampled is None:
            return ModelRunnerOutput(token_ids, logprobs)
        if self.copied is not None:
            self.copied.synchronize()
        values = self.host_values.tolist()
        if self.sampled.logprobs is None:
            for row, token_id in zip(self.sample_rows, values, strict=True):
                token_ids[row] = token_id
            return ModelRunnerOutput(token_ids, logprobs)
        num_top = self.sampled.top_ids.shape[1]
        for row, request, packed in zip(self.sample_rows, self.requests, values, strict=True):
            token_id = int(packed[0])
            token_ids[row] = token_id
            num_wanted = request.sampling_params.logprobs
            if num_wanted is None:
                continue
            position = {token_id: Logprob(packed[1], int(packed[2]))}
            for j in range(min(num_wanted, num_top)):
                top_id = int(packed[3 + j])
                position.setdefault(top_id, Logprob(packed[3 + num_top + j], j + 1))
            logprobs[row] = position
        return ModelRunnerOutput(token_ids, logprobs)


class ModelRunner:
    def __init__(
        self, config: EngineConfig, model_config: ModelConfig, device: torch.device,
        dtype: torch.dtype,
    ):
        self.config = config
        self.model_config = model_config
        self.device = torch.device(device)
        self.dtype = dtype
        self.block_size = config.block_size
        self.max_model_len = config.max_model_len or model_config.max_position_embeddings
        if self.max_model_len > model_config.max_position_embeddings:
            raise ValueError(
                f"max_model_len {self.max_model_len} is larger than the model's "
                f"max_position_embeddings {model_config.max_position_embeddings}"
            )
        torch.manual_seed(config.seed)  # unseeded sampling draws from torch's default RNG
        self.model = load_model(config.model, model_config, self.device, dtype, self.max_model_len)
        self.matmul_tuning: list = []  # linear_tuning.TuneResult of each case tuned here
        self.matmul_tuning_s = 0.0  # start-up seconds the tuning took
        triton_ops = ops.use_triton(self.model.lm_head.weight)
        if config.tune_matmuls and triton_ops:
            self._tune_matmuls()
        self.sampler = Sampler()
        # request id -> seed of its random stream (SamplingMetadata.from_requests draws one
        # for an unseeded request when it first samples); dropped when the request finishes
        self.generators: dict[str, int] = {}
        self.token_cache = TokenIdCache()  # int64 prompt/output ids for the penalties
        # the Triton prefill kernel's tile (its work list comes with each step's inputs)
        self.prefill_tile_queries = 0
        if triton_ops:
            from lodger.kernels.prefill_attention import queries_per_tile

            self.prefill_tile_queries = queries_per_tile(
                model_config.num_attention_heads, model_config.num_key_value_heads
            )
        self.inputs = InputBuilder(
            config.block_size, self.max_model_len, config.max_num_seqs,
            config.max_num_batched_tokens, self.device, self.prefill_tile_queries,
        )
        self.kv_cache: Tensor | None = None
        self.kv_caches: list[tuple[Tensor, Tensor]] = []
        self.graphs = None  # CudaGraphs once captured (CUDA, not enforce_eager)

    def _tune_matmuls(self) -> None:
        """Pick cuBLAS or the Triton matmul per weight shape at the decode batch sizes the
        CUDA graphs will run (powers of two, as their buckets; up to max_num_seqs). Only for
        16-bit weights: float32 keeps cuBLAS (the kernels target bf16/fp16 decode)."""
        from lodger.engine.cuda_graphs import batch_buckets
        from lodger.kernels import linear_tuning

        if self.dtype == torch.float32:
            logger.info("tune_matmuls: float32 weights keep cuBLAS; tuning is for bf16/fp16")
            return
        sizes = [b for b in batch_buckets(self.config.max_num_seqs)
                 if b <= linear_tuning.MAX_TUNED_ROWS]
        start = time.perf_counter()
        with torch.inference_mode():
            self.matmul_tuning = linear_tuning.tune_model_linears(self.model, sizes)
        self.matmul_tuning_s = time.perf_counter() - start

    # ---- KV cache ------------------------------------------------------------------------

    @property
    def bytes_per_block(self) -> int:
        """KV cache bytes of one block over all layers (K and V)."""
        mc = self.model_config
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * mc.num_hidden_layers * self.block_size * mc.kv_size * elem

    def profile_num_kv_blocks(self) -> int:
        """How many KV blocks to allocate (block 0, the null block, included).

        config.num_kv_blocks wins. CPU: enough for max_num_seqs full-length sequences,
        capped at CPU_KV_CACHE_BYTES. CUDA: what is left of gpu_memory_utilization of the
        card after the weights and the peak activations of a max_num_batched_tokens step.
        """
        if self.config.num_kv_blocks is not None:
            num_blocks = self.config.num_kv_blocks
        elif self.device.type == "cuda":
            from lodger.engine.cuda_memory import profile_cuda_kv_blocks

            num_blocks = profile_cuda_kv_blocks(self)
        else:
            wanted = self.config.max_num_seqs * cdiv(self.max_model_len, self.block_size) + 1
            num_blocks = max(2, min(wanted, CPU_KV_CACHE_BYTES // self.bytes_per_block))
        logger.info(
            "KV cache: %d blocks of %d tokens (%d tokens, %.1f MiB)", num_blocks,
            self.block_size, num_blocks * self.block_size,
            num_blocks * self.bytes_per_block / 2**20,
        )
        return num_blocks

    def init_kv_cache(self, num_blocks: int) -> None:
        """One zeroed allocation [2, layers, num_blocks, block_size, kv_heads, head_dim],
        sliced into a (k_cache, v_cache) pair per layer; then CUDA graph capture."""
        assert num_blocks >= 2, "block 0 is the null block: at least 2 blocks are needed"
        mc = self.model_config
        shape = (2, mc.num_hidden_layers, num_blocks, self.block_size,
                 mc.num_key_value_heads, mc.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.kv_caches = [
            (self.kv_cache[0, layer], self.kv_cache[1, layer])
            for layer in range(mc.num_hidden_layers)
        ]
        # graphs need the Triton ops: the torch references read tensors on the host
        if ops.use_triton(self.kv_cache) and not self.config.enforce_eager:
            from lodger.engine.cuda_graphs import CudaGraphs

            self.graphs = CudaGraphs(self.model, self.kv_caches, self.config, self.max_model_len,
                                     self.prefill_tile_queries)
            self.graphs.capture()

    # ---- one step ------------------------------------------------------------------------

    def prepare_inputs(self, out, previous: PendingStep | None = None) -> StepInputs:
        """The step's device inputs for SchedulerOutput `out` (timed by bench/step_overhead);
        `previous`: the launched step whose sampled ids some of them still need."""
        self.inputs.drop(out.finished_request_ids)
        previous_rows = None if previous is None else previous.sampled_rows()
        return self.inputs.prepare(
            out.scheduled, out.num_scheduled_tokens, out.num_computed_tokens, out.samples,
            previous_rows,
        )

    def execute(self, out) -> ModelRunnerOutput:
        """Run SchedulerOutput `out`: forward, sample the requests at their last token."""
        return self.launch(out).result()

    def launch(self, out, previous: PendingStep | None = None) -> PendingStep:
        """Queue the step's device work and return at once (on CUDA the host does not wait);
        `.result()` waits for the sampled tokens. The caller may do host work in between,
        launch the next step included (pass this one as its `previous`)."""
        for request_id in out.finished_request_ids:
            self.generators.pop(request_id, None)
        self.token_cache.drop(out.finished_request_ids)
        if not out.scheduled:
            self.inputs.drop(out.finished_request_ids)
            return PendingStep(0, [], [], None)
        assert self.kv_caches, "call init_kv_cache() before execute()"
        inputs = self.prepare_inputs(out, previous)
        num_reqs = len(out.scheduled)
        sample_rows = inputs.sample_rows
        requests = [out.scheduled[i] for i in sample_rows]
        with torch.inference_mode():
            if inputs.num_deferred:
                assert previous is not None and previous.sampled is not None
                sources = previous.sampled.token_ids.index_select(0, inputs.deferred_sources)
                inputs.input_ids.index_copy_(0, inputs.deferred_positions, sources)
            hidden = self._forward(inputs)
            if not requests:
                return PendingStep(num_reqs, [], [], None)
            # built while the device runs the forward: its copies are pinned and non-blocking
            num_output_tokens = [  # the sampled token's index among the request's outputs
                out.num_computed_tokens[row] + out.num_scheduled_tokens[row]
                - out.scheduled[row].num_prompt_tokens
                for row in sample_rows
            ]
            meta = SamplingMetadata.from_requests(
                requests, self.device, self.generators, self.token_cache, num_output_tokens
            )
            # every row samples (a decode step of sampling requests): rows in order, no gather
            rows = (hidden if len(sample_rows) == inputs.num_tokens
                    else hidden[inputs.logits_indices])
            logits = self.model.compute_logits(rows)
            sampled = self.sampler(logits, meta)
            host_values, copied = self._copy_to_host(_pack(sampled))
        return PendingStep(
            num_reqs, sample_rows, requests, sampled, host_values, copied, meta.host_buffers,
            has_penalties=meta.presence_penalties is not None,
        )

    def _forward(self, inputs: StepInputs) -> Tensor:
        if self.graphs is not None and self.graphs.can_run(inputs):
            return self.graphs.run(inputs)
        return self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)

    def _copy_to_host(self, values: Tensor) -> tuple[Tensor, object]:
        """Queue a copy of `values` to the host; on CUDA into pinned memory without
        blocking, with an event to wait on (a plain .tolist() would wait for every step
        queued after this one too)."""
        if self.device.type != "cuda":
            return values, None
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return host, copied


def _pack(sampled: SamplerOutput) -> Tensor:
    """The sampled ids [N] int64; with logprobs, rows of token id | logprob | rank | K top
    ids | K top logprobs [N, 3 + 2K] in float64 (exact for ids and float32 logprobs)."""
    if sampled.logprobs is None:
        return sampled.token_ids
    return torch.cat(
        [
            sampled.token_ids[:, None].double(),
            sampled.logprobs[:, None].double(),
            sampled.ranks[:, None].double(),
            sampled.top_ids.double(),
            sampled.top_logprobs.double(),
        ],
        dim=1,
    )
