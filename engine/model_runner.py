"""ModelRunner: owns the model, the KV cache and the sampler; runs one step per call.

`execute(SchedulerOutput)` builds the step's inputs (engine/step_inputs.py), runs the
decoder over all new tokens, computes logits only for the requests that sample this step
(their last scheduled token), samples, and copies the results to the host once.
On CUDA, decode-only batches replay CUDA graphs (engine/cuda_graphs.py) unless
`enforce_eager`; the CPU path never imports that module.
"""

from __future__ import annotations

import logging
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

    runner: ModelRunner
    num_reqs: int  # requests in the step
    sample_rows: list[int]  # batch rows that sample
    requests: list  # the requests of those rows
    sampled: SamplerOutput | None  # device tensors; None when no row samples
    # pinned host sources of the sampling metadata's non-blocking copies, kept until result()
    host_buffers: list | None = None

    def result(self) -> ModelRunnerOutput:
        """Wait for the step and copy its tokens (and logprobs) to the host."""
        if self.sampled is None:
            return ModelRunnerOutput([None] * self.num_reqs, [None] * self.num_reqs)
        return self.runner._to_host(self.num_reqs, self.sample_rows, self.requests, self.sampled)


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
        self.sampler = Sampler()
        # request id -> seed of its random stream (SamplingMetadata.from_requests draws one
        # for an unseeded request when it first samples); dropped when the request finishes
        self.generators: dict[str, int] = {}
        self.token_cache = TokenIdCache()  # int64 prompt/output ids for the penalties
        self.inputs = InputBuilder(
            config.block_size, self.max_model_len, config.max_num_seqs,
            config.max_num_batched_tokens, self.device,
        )
        self.kv_cache: Tensor | None = None
        self.kv_caches: list[tuple[Tensor, Tensor]] = []
        self.graphs = None  # CudaGraphs once captured (CUDA, not enforce_eager)

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

            self.graphs = CudaGraphs(self.model, self.kv_caches, self.config, self.max_model_len)
            self.graphs.capture()

    # ---- one step ------------------------------------------------------------------------

    def prepare_inputs(self, out) -> StepInputs:
        """The step's device inputs for SchedulerOutput `out` (timed by bench/step_overhead)."""
        self.inputs.drop(out.finished_request_ids)
        return self.inputs.prepare(out.scheduled, out.num_scheduled_tokens)

    def execute(self, out) -> ModelRunnerOutput:
        """Run SchedulerOutput `out`: forward, sample the requests at their last token."""
        return self.launch(out).result()

    def launch(self, out) -> PendingStep:
        """Queue the step's device work and return at once (on CUDA the host does not wait);
        `.result()` waits for the sampled tokens. The caller may do host work in between."""
        for request_id in out.finished_request_ids:
            self.generators.pop(request_id, None)
        self.token_cache.drop(out.finished_request_ids)
        if not out.scheduled:
            self.inputs.drop(out.finished_request_ids)
            return PendingStep(self, 0, [], [], None)
        assert self.kv_caches, "call init_kv_cache() before execute()"
        inputs = self.prepare_inputs(out)
        num_reqs = len(out.scheduled)
        requests = [out.scheduled[i] for i in inputs.sample_rows]
        with torch.inference_mode():
            hidden = self._forward(inputs)
            if not requests:
                return PendingStep(self, num_reqs, [], [], None)
            # built while the device runs the forward: its copies are pinned and non-blocking
            meta = SamplingMetadata.from_requests(
                requests, self.device, self.generators, self.token_cache
            )
            logits = self.model.compute_logits(hidden[inputs.logits_indices])
            sampled = self.sampler(logits, meta)
        return PendingStep(
            self, num_reqs, inputs.sample_rows, requests, sampled, meta.host_buffers
        )

    def _forward(self, inputs: StepInputs) -> Tensor:
        if self.graphs is not None and self.graphs.can_run(inputs):
            return self.graphs.run(inputs)
        return self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)

    def _to_host(
        self, num_reqs: int, sample_rows: list[int], requests: list, sampled: SamplerOutput
    ) -> ModelRunnerOutput:
        """One device->host copy of the sampled ids (and logprobs) -> per-request lists."""
        token_ids: list[int | None] = [None] * num_reqs
        logprobs: list[SampleLogprobs | None] = [None] * num_reqs
        if sampled.logprobs is None:
            for row, token_id in zip(sample_rows, sampled.token_ids.tolist(), strict=True):
                token_ids[row] = token_id
            return ModelRunnerOutput(token_ids, logprobs)
        # token id | logprob | rank | K top ids | K top logprobs, exact in float64
        packed = torch.cat(
            [
                sampled.token_ids[:, None].double(),
                sampled.logprobs[:, None].double(),
                sampled.ranks[:, None].double(),
                sampled.top_ids.double(),
                sampled.top_logprobs.double(),
            ],
            dim=1,
        ).tolist()
        num_top = sampled.top_ids.shape[1]
        for row, request, values in zip(sample_rows, requests, packed, strict=True):
            token_id = int(values[0])
            token_ids[row] = token_id
            num_wanted = request.sampling_params.logprobs
            if num_wanted is None:
                continue
            position = {token_id: Logprob(values[1], int(values[2]))}
            for j in range(min(num_wanted, num_top)):
                top_id = int(values[3 + j])
                position.setdefault(top_id, Logprob(values[3 + num_top + j], j + 1))
            logprobs[row] = position
        return ModelRunnerOutput(token_ids, logprobs)
