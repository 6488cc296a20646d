"""lodger in a FastAPI app: the API mounted at /llm, and routes that call the SDK.

    uvicorn fastapi_app:app --app-dir examples --port 8000

Environment: LODGER_MODEL (checkpoint directory; default: the bundled model),
LODGER_MAX_MODEL_LEN (optional), LODGER_BASE_URL (optional: the routes call that
OpenAI-compatible server instead of the engine in this process).
"""

import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from lodger.asgi import create_app
from lodger.engine import AsyncEngine
from lodger.sdk import connect

_max_model_len = os.environ.get("LODGER_MAX_MODEL_LEN")
engine = AsyncEngine(
    model=os.environ.get("LODGER_MODEL"),
    max_model_len=int(_max_model_len) if _max_model_len else None,
)
BASE_URL = os.environ.get("LODGER_BASE_URL")
# The one line that switches the routes between the engine in this process and a server:
client = connect(base_url=BASE_URL) if BASE_URL else connect(engine=engine)


@asynccontextmanager
async def lifespan(app: FastAPI):
    # A mounted app's own lifespan does not run under FastAPI: the host owns the engine.
    yield
    await client.aclose()
    await engine.shutdown(drain_timeout=10)


app = FastAPI(title="lodger FastAPI example", lifespan=lifespan)
app.mount("/llm", create_app(engine=engine))


@app.get("/generate")
async def generate(prompt: str = "def fibonacci(n):", max_tokens: int = 32) -> dict:
    answer = await client.generate(prompt, max_tokens=min(max_tokens, 256))
    return {"text": answer.text, "finish_reason": answer.finish_reason,
            "usage": answer.usage.model_dump() if answer.usage else None}


@app.get("/stream")
async def stream(prompt: str = "def fibonacci(n):", max_tokens: int = 32) -> StreamingResponse:
    async def text():
        async with client.stream(prompt, max_tokens=min(max_tokens, 256)) as deltas:
            async for delta in deltas:
                yield delta.text

    return StreamingResponse(text(), media_type="text/plain; charset=utf-8")
