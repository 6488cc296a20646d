"""Turns the scheduler's updated requests into per-request delta outputs.

It owns each request's detokenizers, finds stop strings (finishing the request in the
scheduler through a callback) and fills logprob token strings. Plain Python, engine thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lodger.engine.detokenizer import IncrementalDetokenizer
from lodger.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput, SampleLogprobs
from lodger.engine.request import Request, RequestStatus
from lodger.engine.sampling_params import SamplingParams
from lodger.engine.tokenizer import Tokenizer

FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


def child_request_id(index: int, parent_id: str, n: int) -> str:
    """The scheduler-side id of sample `index` of a request; n == 1 keeps the user's id."""
    return parent_id if n == 1 else f"{index}_{parent_id}"


@dataclass(slots=True)
class SampleState:
    index: int  # position among the request's n samples
    detokenizer: IncrementalDetokenizer
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass(slots=True)
class RequestState:
    request_id: str  # the user's id
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    samples: dict[str, SampleState]  # child request id -> its state
    metrics: RequestMetrics
    num_unfinished_samples: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_unfinished_samples = len(self.samples)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, finish_in_scheduler: Callable[[str, str], None]):
        self.tokenizer = tokenizer
        # called with a child id and the stop string that ends it, so its blocks are freed at once
        self.finish_in_scheduler = finish_in_scheduler
        self.states: dict[str, RequestState] = {}  # user's request id -> state
        self.parent_of: dict[str, str] = {}  # child id -> user's request id

    def add(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        child_ids: list[str],
        arrival_time: float,
    ) -> None:
        samples = {
            child_id: SampleState(index, self._detokenizer(prompt_token_ids, params))
            for index, child_id in enumerate(child_ids)
        }
        metrics = RequestMetrics(arrival_time, num_prompt_tokens=len(prompt_token_ids))
        self.states[request_id] = RequestState(
            request_id, prompt, prompt_token_ids, params, samples, metrics
        )
        for child_id in child_ids:
            self.parent_of[child_id] = request_id

    def _detokenizer(self, prompt_token_ids: list[int], params: SamplingParams):
        return IncrementalDetokenizer(
            self.tokenizer,
            prompt_token_ids,
            skip_special_tokens=params.skip_special_tokens,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
        )

    def remove(self, request_id: str) -> list[str]:
        """Forget a request (abort); returns its child ids still known."""
        state = self.states.pop(request_id, None)
        if state is None:
            return []
        for child_id in state.samples:
            self.parent_of.pop(child_id, None)
        return list(state.samples)

    def has(self, request_id: str) -> bool:
        return request_id in self.states

    def process(
        self, updated: list[Request], logprobs_by_child: dict[str, SampleLogprobs]
    ) -> list[RequestOutput]:
        """One step's new tokens -> one delta RequestOutput per user request with news."""
        now = time.monotonic()
        deltas: dict[str, list[CompletionOutput]] = {}
        for request in updated:
            parent_id = self.parent_of.get(request.request_id)
            if parent_id is None:
                continue  # aborted while its step ran
            state = self.states[parent_id]
            sample = state.samples[request.request_id]
            if sample.finish_reason is not None:
                continue
            delta = self._sample_delta(state, sample, request, logprobs_by_child)
            deltas.setdefault(parent_id, []).append(delta)
            if state.metrics.first_token_time is None:
                state.metrics.first_token_time = now
            if state.metrics.num_cached_tokens == 0:
                state.metrics.num_cached_tokens = request.num_cached_tokens
        return [self._request_output(self.states[pid], outs, now) for pid, outs in deltas.items()]

    def _sample_delta(
        self,
        state: RequestState,
        sample: SampleState,
        request: Request,
        logprobs_by_child: dict[str, SampleLogprobs],
    ) -> CompletionOutput:
        new_token_id = request.output_token_ids[-1]
        state.metrics.num_generation_tokens += 1
        finish_reason = FINISH_REASONS.get(request.status)
        stop_reason = request.stop_reason
        # the scheduler stops only on tokens (EOS, stop_token_ids); like vLLM, their text is
        # left out unless include_stop_str_in_output
        hides_stop_token = finish_reason == "stop" and not state.params.include_stop_str_in_output
        new_ids = [] if hides_stop_token else [new_token_id]
        text, stop_str = sample.detokenizer.add(new_ids, finished=finish_reason is not None)
        if stop_str is not None:
            if finish_reason is None:
                self.finish_in_scheduler(request.request_id, stop_str)
            finish_reason, stop_reason = "stop", stop_str
        logprobs = None
        if state.params.logprobs is not None:
            position = logprobs_by_child[request.request_id]
            self._fill_token_strings(position)
            sample.cumulative_logprob += position[new_token_id].logprob
            logprobs = [position]
        if finish_reason is not None:
            sample.finish_reason, sample.stop_reason = finish_reason, stop_reason
            state.num_unfinished_samples -= 1
        return CompletionOutput(
            index=sample.index,
            text=text,
            token_ids=[new_token_id],
            cumulative_logprob=sample.cumulative_logprob if logprobs is not None else None,
            logprobs=logprobs,
            finish_reason=finish_reason,
            stop_reason=stop_reason,
        )

    def _fill_token_strings(self, position: SampleLogprobs) -> None:
        for token_id, logprob in position.items():
            logprob.decoded_token = self.tokenizer.token_text(token_id)

    def _request_output(
        self, state: RequestState, outputs: list[CompletionOutput], now: float
    ) -> RequestOutput:
        finished = state.num_unfinished_samples == 0
        if finished:
            state.metrics.finished_time = now
            self.remove(state.request_id)
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            outputs=outputs,
            finished=finished,
            metrics=state.metrics,
        )
