"""The offline API, shaped like vLLM's so that users can switch:

    from lodger.engine import LLM, SamplingParams
    llm = LLM(model="path/to/checkpoint", max_model_len=2048)
    outputs = llm.generate(["Hello"], SamplingParams(max_tokens=32))
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from lodger.engine.config import EngineConfig
from lodger.engine.engine_core import EngineCore
from lodger.engine.outputs import CompletionOutput, RequestOutput, SampleLogprobs
from lodger.engine.sampling_params import SamplingParams

PromptInput = str | dict[str, Any]
Message = dict[str, str]


class LLM:
    def __init__(self, model: str | None = None, **engine_options: Any):
        if model is None:
            from lodger import default_model_path

            model = default_model_path()
        self.engine = EngineCore(EngineConfig.from_kwargs(model, **engine_options))
        self._request_counter = itertools.count()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt; returns finished outputs in input order."""
        prompt_list = [prompts] if isinstance(prompts, str | dict) else list(prompts)
        params_list = _params_per_prompt(sampling_params, len(prompt_list))
        request_ids = [str(next(self._request_counter)) for _ in prompt_list]
        added: list[str] = []
        try:
            for request_id, prompt, params in zip(
                request_ids, prompt_list, params_list, strict=True
            ):
                self.engine.add_request(request_id, _prompt_value(prompt), params)
                added.append(request_id)
            return self._run(request_ids, use_tqdm)
        except BaseException:
            for request_id in added:
                self.engine.abort_request(request_id)
            raise

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Apply the checkpoint's chat template to one conversation or a list of them."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tokenizer = self.engine.tokenizer
        prompts = [
            tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
            for conversation in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        running: dict[str, _Accumulator] = {}
        progress = tqdm(total=len(request_ids), desc="Processed prompts", disable=not use_tqdm)
        num_output_tokens, start = 0, time.perf_counter()
        with progress:
            while len(finished) < len(request_ids):
                for delta in self.engine.step():
                    accumulator = running.get(delta.request_id)
                    if accumulator is None:
                        accumulator = running[delta.request_id] = _Accumulator(delta)
                    num_output_tokens += accumulator.add(delta)
                    if delta.finished:
                        finished[delta.request_id] = running.pop(delta.request_id).output()
                        progress.update(1)
                if use_tqdm:
                    rate = num_output_tokens / (time.perf_counter() - start)
                    progress.set_postfix_str(f"output {rate:.1f} tok/s", refresh=False)
                assert finished or self.engine.has_unfinished_requests(), "engine lost requests"
        return [finished[request_id] for request_id in request_ids]


def _params_per_prompt(
    sampling_params: SamplingParams | Sequence[SamplingParams] | None, num_prompts: int
) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * num_prompts
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * num_prompts
    params = list(sampling_params)
    if len(params) != num_prompts:
        raise ValueError(
            f"sampling_params has {len(params)} entries but there are {num_prompts} prompts"
        )
    return params


def _prompt_value(prompt: PromptInput) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        if "prompt" in prompt:
            return prompt["prompt"]
    raise ValueError(
        "each prompt must be a string, {'prompt': str} or {'prompt_token_ids': [int, ...]}, "
        f"got {type(prompt).__name__}"
    )


@dataclass(slots=True)
class _Sample:
    """One of a request's n samples, accumulated from step deltas."""

    index: int
    text_pieces: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[SampleLogprobs] | None = None
    last: CompletionOutput | None = None  # the latest delta: finish and cumulative logprob


class _Accumulator:
    """Folds one request's delta outputs into its final RequestOutput."""

    def __init__(self, first: RequestOutput):
        self.first = first  # the first delta: the request's prompt fields
        self.last = first  # the latest delta: the request's metrics
        self.samples: dict[int, _Sample] = {}

    def add(self, delta: RequestOutput) -> int:
        """Fold in one delta; returns the number of new tokens."""
        num_new = 0
        self.last = delta
        for new in delta.outputs:
            sample = self.samples.get(new.index)
            if sample is None:
                sample = self.samples[new.index] = _Sample(new.index)
            sample.text_pieces.append(new.text)
            sample.token_ids += new.token_ids
            if new.logprobs is not None:
                if sample.logprobs is None:
                    sample.logprobs = []
                sample.logprobs += new.logprobs
            sample.last = new
            num_new += len(new.token_ids)
        return num_new

    def output(self) -> RequestOutput:
        completions = [
            CompletionOutput(
                sample.index, "".join(sample.text_pieces), sample.token_ids,
                sample.last.cumulative_logprob, sample.logprobs,
                sample.last.finish_reason, sample.last.stop_reason,
            )
            for _, sample in sorted(self.samples.items())
        ]
        first = self.first
        return RequestOutput(first.request_id, first.prompt, first.prompt_token_ids, completions,
                             True, self.last.metrics)
