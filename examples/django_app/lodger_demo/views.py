"""Views calling the model through the lodger SDK."""

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.shortcuts import render

from lodger_demo.llm import client, sync_client

DEFAULT_PROMPT = "def fibonacci(n):"


def _args(request: HttpRequest) -> tuple[str, int]:
    prompt = request.GET.get("prompt", DEFAULT_PROMPT)
    return prompt, min(int(request.GET.get("max_tokens", "32")), 256)


def _answer(generation) -> dict:
    return {"text": generation.text, "finish_reason": generation.finish_reason,
            "usage": generation.usage.model_dump() if generation.usage else None}


async def generate(request: HttpRequest) -> JsonResponse:
    """GET /generate?prompt=...&max_tokens=...: the whole answer as JSON."""
    prompt, max_tokens = _args(request)
    return JsonResponse(_answer(await client.generate(prompt, max_tokens=max_tokens)))


async def stream(request: HttpRequest) -> StreamingHttpResponse:
    """GET /stream?prompt=...: the answer as plain text, streamed while it is generated.
    If the browser goes away, Django closes the iterator and the request is aborted."""
    prompt, max_tokens = _args(request)

    async def text():
        async with client.stream(prompt, max_tokens=max_tokens) as deltas:
            async for delta in deltas:
                yield delta.text

    return StreamingHttpResponse(text(), content_type="text/plain; charset=utf-8")


def sync_generate(request: HttpRequest) -> JsonResponse:
    """A plain (sync) view: the blocking client."""
    prompt, max_tokens = _args(request)
    return JsonResponse(_answer(sync_client.generate(prompt, max_tokens=max_tokens)))


def chat_page(request: HttpRequest):
    """A small chat page streaming from the mounted API at /llm/v1/chat/completions."""
    return render(request, "chat.html")
