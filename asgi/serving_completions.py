"""POST /v1/completions: one response, or a stream of chunks."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from lodger.asgi.errors import bad_request
from lodger.asgi.logprobs import CompletionLogprobsBuilder, merge_completion_logprobs
from lodger.asgi.protocol import CompletionRequest
from lodger.asgi.protocol_responses import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    CompletionStreamResponse,
)
from lodger.asgi.sampling import completion_params
from lodger.asgi.serving import (
    ChoiceState,
    Prompt,
    ServingContext,
    Usage,
    engine_errors,
    run_prompts,
)


def completion_prompts(request: CompletionRequest) -> list[Prompt]:
    """The request's prompts: one text, one list of token ids, or a batch of either."""
    prompt = request.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    for p in prompt:
        if not p:
            raise bad_request("prompt must not hold an empty prompt", param="prompt")
    return list(prompt)


async def create_completion(ctx: ServingContext, request: CompletionRequest) -> CompletionResponse:
    ctx.check_model(request.model)
    params = completion_params(request)
    prompts = completion_prompts(request)
    engine = await ctx.ready_engine()
    request_id = f"cmpl-{uuid.uuid4().hex}"
    choices: dict[int, ChoiceState] = {}
    logprob_parts: dict[int, list[CompletionLogprobs]] = {}
    builders: dict[int, CompletionLogprobsBuilder] = {}
    prompt_token_ids: dict[int, list[int]] = {}
    usage = Usage()
    with engine_errors():
        async with aclosing(run_prompts(engine, prompts, params, request_id)) as outputs:
            async for prompt_index, out in outputs:
                usage.add(prompt_index, out)
                prompt_token_ids[prompt_index] = out.prompt_token_ids
                for delta in out.outputs:
                    index = prompt_index * params.n + delta.index
                    choices.setdefault(index, ChoiceState(index)).add(delta)
                    if params.logprobs is not None:
                        builder = builders.setdefault(
                            index, CompletionLogprobsBuilder(params.logprobs, _token_text(ctx))
                        )
                        part = builder.build(delta.token_ids, delta.logprobs or [])
                        logprob_parts.setdefault(index, []).append(part)
    return CompletionResponse(
        id=request_id,
        created=int(time.time()),
        model=ctx.model_name,
        choices=[
            CompletionChoice(
                index=index,
                text="".join(state.text),
                logprobs=merge_completion_logprobs(logprob_parts.get(index, [])),
                finish_reason=state.finish_reason,
                stop_reason=state.stop_reason,
                token_ids=state.token_ids if request.return_token_ids else None,
            )
            for index, state in sorted(choices.items())
        ],
        usage=usage.info(),
        prompt_token_ids=(
            [prompt_token_ids[i] for i in sorted(prompt_token_ids)]
            if request.return_token_ids else None
        ),
    )


async def stream_completion(
    ctx: ServingContext, request: CompletionRequest
) -> AsyncIterator[CompletionStreamResponse]:
    """Chunks of new text per choice; with include_usage, a last chunk with the usage."""
    ctx.check_model(request.model)
    params = completion_params(request)
    prompts = completion_prompts(request)
    engine = await ctx.ready_engine()
    request_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    builders: dict[int, CompletionLogprobsBuilder] = {}
    usage = Usage()
    with engine_errors():
        async with aclosing(run_prompts(engine, prompts, params, request_id)) as outputs:
            async for prompt_index, out in outputs:
                usage.add(prompt_index, out)
                choices = []
                for delta in out.outputs:
                    index = prompt_index * params.n + delta.index
                    logprobs = None
                    if params.logprobs is not None:
                        builder = builders.setdefault(
                            index, CompletionLogprobsBuilder(params.logprobs, _token_text(ctx))
                        )
                        logprobs = builder.build(delta.token_ids, delta.logprobs or [])
                    elif not (delta.text or delta.finish_reason or request.return_token_ids):
                        continue  # nothing to tell (text held back, e.g. a stop prefix)
                    choices.append(
                        CompletionChoice(
                            index=index,
                            text=delta.text,
                            logprobs=logprobs,
                            finish_reason=delta.finish_reason,
                            stop_reason=delta.stop_reason,
                            token_ids=delta.token_ids if request.return_token_ids else None,
                        )
                    )
                if choices:
                    yield CompletionStreamResponse(
                        id=request_id, created=created, model=ctx.model_name, choices=choices
                    )
    if request.stream_options is not None and request.stream_options.include_usage:
        yield CompletionStreamResponse(
            id=request_id, created=created, model=ctx.model_name, choices=[],
            usage=usage.info(),
        )


def _token_text(ctx: ServingContext):
    return ctx.engine.tokenizer.token_text
