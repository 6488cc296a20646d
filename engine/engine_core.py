"""EngineCore: the synchronous heart of the engine. No asyncio, no threads.

One `step()` = schedule -> launch the model on the batch -> update request state with the
previous step's tokens -> detokenize and build delta outputs. The serving layer drives it
from a dedicated thread.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from lodger.engine.config import EngineConfig
from lodger.engine.model_config import ModelConfig
from lodger.engine.model_runner import ModelRunner, PendingStep
from lodger.engine.output_processor import OutputProcessor, child_request_id
from lodger.engine.outputs import RequestOutput, SampleLogprobs
from lodger.engine.request import Request, RequestStatus
from lodger.engine.sampling_params import SamplingParams
from lodger.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from lodger.engine.stats import EngineStats
from lodger.engine.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _InFlight:
    """A launched step the scheduler has not been updated with yet."""

    scheduled: SchedulerOutput
    pending: PendingStep


class EngineCore:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_config = ModelConfig.from_pretrained(config.model)
        self.tokenizer = Tokenizer.from_pretrained(config.model)
        self.device, self.dtype = config.torch_device, config.torch_dtype
        # the runner resolves max_model_len (default and bound: max_position_embeddings)
        self.runner = ModelRunner(config, self.model_config, self.device, self.dtype)
        self.max_model_len = self.runner.max_model_len
        num_blocks = self.runner.profile_num_kv_blocks()
        self.runner.init_kv_cache(num_blocks)
        self.scheduler = Scheduler(
            SchedulerConfig(
                block_size=config.block_size,
                num_blocks=num_blocks,
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                max_model_len=self.max_model_len,
                enable_prefix_caching=config.enable_prefix_caching,
            )
        )
        self.outputs = OutputProcessor(self.tokenizer, self._finish_stopped)
        self.stats_counters = EngineStats()
        self._in_flight: _InFlight | None = None  # the launched step, until it is resolved
        # a resolved step's (updated requests, logprobs), turned into outputs in the same
        # step() call while the device computes the next step
        self._unprocessed: tuple[list[Request], dict[str, SampleLogprobs]] | None = None
        logger.info(
            "lodger engine ready: %s on %s (%s), %d KV blocks of %d tokens (%d tokens), "
            "max_model_len %d",
            config.model, self.device, self.dtype, num_blocks, config.block_size,
            num_blocks * config.block_size, self.max_model_len,
        )

    # ---- requests in ----------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        arrival_time: float | None = None,
    ) -> None:
        """Queue a request; raises ValueError (naming the problem) before queueing anything."""
        if self.outputs.has(request_id):
            raise ValueError(f"request_id {request_id!r} is already in use")
        prompt_text, prompt_token_ids = self._prompt_tokens(prompt)
        max_tokens = self._check_lengths(prompt_token_ids, params)
        self._check_stop_token_ids(params)
        arrival_time = time.monotonic() if arrival_time is None else arrival_time
        child_ids = [child_request_id(i, request_id, params.n) for i in range(params.n)]
        self.outputs.add(request_id, prompt_text, prompt_token_ids, params, child_ids, arrival_time)
        for index, child_id in enumerate(child_ids):
            self.scheduler.add_request(
                Request(
                    request_id=child_id,
                    prompt_token_ids=prompt_token_ids,
                    sampling_params=self._child_params(params, index, max_tokens),
                    eos_token_id=self.tokenizer.eos_token_id,
                    arrival_time=arrival_time,
                    parent_id=request_id if params.n > 1 else None,
                )
            )
        self.stats_counters.num_prompt_tokens += len(prompt_token_ids)

    def _prompt_tokens(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        token_ids = list(prompt)
        vocab_size = self.model_config.vocab_size
        for token_id in token_ids:
            if not isinstance(token_id, int) or not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"prompt_token_ids must be integers in [0, {vocab_size}), got {token_id!r}"
                )
        return None, token_ids

    def _check_lengths(self, prompt_token_ids: list[int], params: SamplingParams) -> int:
        """Validate the prompt against max_model_len and the pool; returns max_tokens to use."""
        num_prompt_tokens = len(prompt_token_ids)
        if num_prompt_tokens == 0:
            raise ValueError("prompt must not be empty")
        if num_prompt_tokens >= self.max_model_len:
            raise ValueError(
                f"prompt is {num_prompt_tokens} tokens but max_model_len is "
                f"{self.max_model_len}: it must leave room for at least one generated token"
            )
        room = self.max_model_len - num_prompt_tokens
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        problem = self.scheduler.check_fits(num_prompt_tokens + max_tokens)
        if problem is not None:
            raise ValueError(problem)
        return max_tokens

    def _check_stop_token_ids(self, params: SamplingParams) -> None:
        vocab_size = self.model_config.vocab_size
        for token_id in params.stop_token_ids:
            if not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"stop_token_ids must be token ids in [0, {vocab_size}), got {token_id}"
                )

    def _child_params(self, params: SamplingParams, index: int, max_tokens: int):
        """Sample `index` of a request: its own seed (seed + index) so n samples differ, and
        unless ignore_eos, the generation config's extra EOS ids as stop tokens (as vLLM)."""
        seed = None if params.seed is None else params.seed + index
        stop_token_ids = list(params.stop_token_ids)
        if not params.ignore_eos:
            stop_token_ids += [i for i in self.tokenizer.stop_token_ids if i not in stop_token_ids]
        return dataclasses.replace(
            params, n=1, seed=seed, max_tokens=max_tokens,
            min_tokens=min(params.min_tokens, max_tokens), stop_token_ids=stop_token_ids,
        )

    def abort_request(self, request_id: str) -> None:
        """Abort a request in any state and return its blocks; unknown ids are ignored."""
        for child_id in self.outputs.remove(request_id):
            self.scheduler.finish_request(child_id, RequestStatus.FINISHED_ABORTED)
            self.stats_counters.num_aborted += 1

    def _finish_stopped(self, child_id: str, stop_str: str) -> None:
        self.scheduler.finish_request(child_id, RequestStatus.FINISHED_STOPPED, stop_str)

    # ---- the loop -------------------------------------------------------------------------

    def has_unfinished_requests(self) -> bool:
        return (
            self.scheduler.has_unfinished_requests()
            or self._in_flight is not None
            or self._unprocessed is not None
        )

    def step(self) -> list[RequestOutput]:
        """Launch a step, resolve the one before it and hand out its outputs.

        Async scheduling: schedule and launch step N while step N-1 may still run on the
        device (its sampled ids feed step N there); then wait for N-1's tokens, update the
        scheduler with them and turn them into outputs (detokenize, stop strings) while the
        device computes N. Synchronous (async_scheduling off, or a penalised request in
        flight): resolve N-1 first, then schedule and launch N, then hand out N-1's outputs
        while N runs. Either way outputs trail the model by one step, and a step that
        schedules nothing resolves what is in flight and hands out what is left.
        """
        in_flight = self._in_flight
        if in_flight is not None and (
            not self.config.async_scheduling or in_flight.pending.has_penalties
        ):
            self._resolve(in_flight)
            in_flight = None
        scheduled = self.scheduler.schedule()
        if scheduled.total_num_scheduled_tokens == 0:
            if in_flight is not None:
                self._resolve(in_flight)
            return self._process_unprocessed()
        pending = self.runner.launch(scheduled, None if in_flight is None else in_flight.pending)
        self.stats_counters.record_step(scheduled.total_num_scheduled_tokens)
        if in_flight is not None:
            self._resolve(in_flight)
        outputs = self._process_unprocessed()
        self._in_flight = _InFlight(scheduled, pending)
        return outputs

    def _resolve(self, in_flight: _InFlight) -> None:
        """Wait for a launched step's tokens and update the scheduler with them."""
        assert self._in_flight is in_flight and self._unprocessed is None
        self._in_flight = None
        scheduled = in_flight.scheduled
        runner_output = in_flight.pending.result()
        updated = self.scheduler.update(scheduled, runner_output.sampled_token_ids)
        logprobs_by_child: dict[str, SampleLogprobs] = {
            request.request_id: position
            for request, position in zip(scheduled.scheduled, runner_output.logprobs, strict=True)
            if position is not None
        }
        self._unprocessed = (updated, logprobs_by_child)

    def _process_unprocessed(self) -> list[RequestOutput]:
        if self._unprocessed is None:
            return []
        updated, logprobs_by_child = self._unprocessed
        self._unprocessed = None
        outputs = self.outputs.process(updated, logprobs_by_child)
        self.stats_counters.record_outputs(outputs)
        return outputs

    def stats(self) -> EngineStats:
        return self.stats_counters.snapshot(self.scheduler.stats())

