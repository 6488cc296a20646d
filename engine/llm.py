"""The offline API, shaped like vLLM's so that users can switch:

    from lodger.engine import LLM, SamplingParams
    llm = LLM(model="path/to/checkpoint", max_model_len=2048)
    outputs = llm.generate(["Hello"], SamplingParams(max_tokens=32))
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from lodger.engine.config import EngineConfig
from lodger.engine.engine_core import EngineCore
from lodger.engine.outputs import CompletionOutput, RequestOutput
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
        running: dict[str, RequestOutput] = {}
        progress = tqdm(total=len(request_ids), desc="Processed prompts", disable=not use_tqdm)
        num_output_tokens, start = 0, time.perf_counter()
        with progress:
            while len(finished) < len(request_ids):
                for delta in self.engine.step():
                    num_output_tokens += sum(len(c.token_ids) for c in delta.outputs)
                    merged = _merge(running.get(delta.request_id), delta)
                    if delta.finished:
                        running.pop(delta.request_id, None)
                        finished[delta.request_id] = merged
                        progress.update(1)
                    else:
                        running[delta.request_id] = merged
                elapsed = time.perf_counter() - start
                progress.set_postfix_str(f"output {num_output_tokens / elapsed:.1f} tok/s", False)
                assert finished or self.engine.has_unfinished_requests(), "engine lost requests"
        return [_sorted_samples(finished[request_id]) for request_id in request_ids]


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


def _merge(so_far: RequestOutput | None, delta: RequestOutput) -> RequestOutput:
    """Fold one step's delta into the accumulated output of a request."""
    if so_far is None:
        so_far = RequestOutput(
            delta.request_id, delta.prompt, delta.prompt_token_ids, [], False, delta.metrics
        )
    by_index = {c.index: c for c in so_far.outputs}
    for new in delta.outputs:
        old = by_index.get(new.index)
        if old is None:
            by_index[new.index] = CompletionOutput(
                new.index, new.text, list(new.token_ids), new.cumulative_logprob,
                list(new.logprobs) if new.logprobs is not None else None,
                new.finish_reason, new.stop_reason,
            )
            continue
        old.text += new.text
        old.token_ids.extend(new.token_ids)
        if new.logprobs is not None:
            old.logprobs.extend(new.logprobs)
        old.cumulative_logprob = new.cumulative_logprob
        old.finish_reason, old.stop_reason = new.finish_reason, new.stop_reason
    so_far.outputs = list(by_index.values())
    so_far.finished, so_far.metrics = delta.finished, delta.metrics
    return so_far


def _sorted_samples(output: RequestOutput) -> RequestOutput:
    output.outputs.sort(key=lambda c: c.index)
    return output
