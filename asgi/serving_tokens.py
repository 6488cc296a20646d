"""POST /tokenize, POST /detokenize and GET /v1/models (vLLM's shapes)."""

from __future__ import annotations

from lodger.asgi.errors import bad_request
from lodger.asgi.protocol import DetokenizeRequest, TokenizeRequest
from lodger.asgi.protocol_responses import (
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeResponse,
)
from lodger.asgi.serving import ServingContext
from lodger.asgi.serving_chat import render_chat


async def tokenize(ctx: ServingContext, request: TokenizeRequest) -> TokenizeResponse:
    ctx.check_model(request.model)
    if (request.prompt is None) == (request.messages is None):
        raise bad_request("give exactly one of prompt or messages", param="prompt")
    engine = await ctx.ready_engine()
    if request.messages is not None:
        token_ids = render_chat(engine, request.messages, request.add_generation_prompt)
    else:
        token_ids = engine.tokenizer.encode(
            request.prompt, add_special_tokens=request.add_special_tokens
        )
    return TokenizeResponse(
        count=len(token_ids),
        max_model_len=engine.max_model_len,
        tokens=token_ids,
        token_strs=(
            engine.tokenizer.convert_ids_to_tokens(token_ids)
            if request.return_token_strs else None
        ),
    )


async def detokenize(ctx: ServingContext, request: DetokenizeRequest) -> DetokenizeResponse:
    ctx.check_model(request.model)
    engine = await ctx.ready_engine()
    vocab_size = len(engine.tokenizer)
    for token_id in request.tokens:
        if not 0 <= token_id < vocab_size:
            raise bad_request(
                f"tokens must be ids in [0, {vocab_size}), got {token_id}", param="tokens"
            )
    return DetokenizeResponse(prompt=engine.tokenizer.decode(request.tokens))


def list_models(ctx: ServingContext) -> ModelList:
    engine = ctx.engine
    max_model_len = engine.max_model_len if engine.is_ready else engine.config.max_model_len
    return ModelList(
        data=[
            ModelCard(
                id=ctx.model_name,
                created=ctx.created,
                root=ctx.model_root,
                max_model_len=max_model_len,
            )
        ]
    )
