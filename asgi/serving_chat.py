"""POST /v1/chat/completions: the chat template, then one response or a stream of chunks."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from lodger.asgi.errors import bad_request
from lodger.asgi.logprobs import chat_logprobs
from lodger.asgi.protocol import ChatCompletionRequest, ChatMessage
from lodger.asgi.protocol_responses import (
    ChatChoice,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    ChatResponseMessage,
    ChatStreamChoice,
    DeltaMessage,
)
from lodger.asgi.sampling import chat_params
from lodger.asgi.serving import ChoiceState, ServingContext, Usage, engine_errors, run_prompts
from lodger.engine.async_engine import AsyncEngine

# the engine's prompt errors are about the messages here
_RENAMES = {"prompt": "messages", "prompt_token_ids": "messages"}


def render_chat(
    engine: AsyncEngine, messages: list[ChatMessage], add_generation_prompt: bool
) -> list[int]:
    """The conversation as prompt token ids, through the checkpoint's chat template (which
    writes any BOS itself, so no special tokens are added when encoding)."""
    conversation = [
        {"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
        for m in messages
    ]
    tokenizer = engine.tokenizer
    try:
        text = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # no template, or the template raised on these messages
        raise bad_request(
            f"messages: cannot apply the chat template: {exc}", param="messages"
        ) from None
    return tokenizer.encode(text, add_special_tokens=False)


async def create_chat_completion(
    ctx: ServingContext, request: ChatCompletionRequest
) -> ChatCompletionResponse:
    ctx.check_model(request.model)
    params = chat_params(request)
    engine = await ctx.ready_engine()
    prompt = render_chat(engine, request.messages, request.add_generation_prompt)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    choices: dict[int, ChoiceState] = {}
    usage = Usage()
    with engine_errors(_RENAMES):
        async with aclosing(run_prompts(engine, [prompt], params, request_id)) as outputs:
            async for _, out in outputs:
                usage.add(0, out)
                for delta in out.outputs:
                    choices.setdefault(delta.index, ChoiceState(delta.index)).add(delta)
    token_text = engine.tokenizer.token_text
    return ChatCompletionResponse(
        id=request_id,
        created=int(time.time()),
        model=ctx.model_name,
        choices=[
            ChatChoice(
                index=index,
                message=ChatResponseMessage(content="".join(state.text)),
                logprobs=(
                    chat_logprobs(state.token_ids, state.logprobs, params.logprobs, token_text)
                    if params.logprobs is not None else None
                ),
                finish_reason=state.finish_reason,
                stop_reason=state.stop_reason,
                token_ids=state.token_ids if request.return_token_ids else None,
            )
            for index, state in sorted(choices.items())
        ],
        usage=usage.info(),
        prompt_token_ids=prompt if request.return_token_ids else None,
    )


async def stream_chat_completion(
    ctx: ServingContext, request: ChatCompletionRequest
) -> AsyncIterator[ChatCompletionStreamResponse]:
    """A first chunk with each choice's role, then content deltas; the last chunk of a choice
    has its finish_reason; with include_usage, a last chunk with the usage."""
    ctx.check_model(request.model)
    params = chat_params(request)
    engine = await ctx.ready_engine()
    prompt = render_chat(engine, request.messages, request.add_generation_prompt)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    token_text = engine.tokenizer.token_text
    usage = Usage()

    def chunk(choices: list[ChatStreamChoice]) -> ChatCompletionStreamResponse:
        return ChatCompletionStreamResponse(
            id=request_id, created=created, model=ctx.model_name, choices=choices
        )

    sent_roles = False
    with engine_errors(_RENAMES):
        async with aclosing(run_prompts(engine, [prompt], params, request_id)) as outputs:
            async for _, out in outputs:
                if not sent_roles:  # after the engine took the request: errors come first
                    roles = [
                        ChatStreamChoice(index=i, delta=DeltaMessage(role="assistant", content=""))
                        for i in range(params.n)
                    ]
                    yield chunk(roles)
                    sent_roles = True
                usage.add(0, out)
                choices = []
                for delta in out.outputs:
                    logprobs = None
                    if params.logprobs is not None:
                        logprobs = chat_logprobs(
                            delta.token_ids, delta.logprobs or [], params.logprobs, token_text
                        )
                    elif not (delta.text or delta.finish_reason or request.return_token_ids):
                        continue  # nothing to tell (text held back, e.g. a stop prefix)
                    choices.append(
                        ChatStreamChoice(
                            index=delta.index,
                            delta=DeltaMessage(content=delta.text or None),
                            logprobs=logprobs,
                            finish_reason=delta.finish_reason,
                            stop_reason=delta.stop_reason,
                            token_ids=delta.token_ids if request.return_token_ids else None,
                        )
                    )
                if choices:
                    yield chunk(choices)
    if request.stream_options is not None and request.stream_options.include_usage:
        final = chunk([])
        final.usage = usage.info()
        yield final
