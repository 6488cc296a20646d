"""lodger.engine (AsyncEngine included) works where the web packages are missing, as on the
GPU box: no starlette, pydantic, openai, tenacity, uvicorn, fastapi or django."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
for name in ("starlette", "pydantic", "openai", "tenacity", "uvicorn", "fastapi", "django",
             "httpx", "prometheus_client"):
    sys.modules[name] = None  # any import of it raises ImportError
import asyncio
from lodger.engine import AsyncEngine, SamplingParams

async def main():
    engine = AsyncEngine(model=sys.argv[1], max_model_len=64, num_kv_blocks=16)
    n = 0
    async for out in engine.generate("a", SamplingParams(max_tokens=2, ignore_eos=True)):
        n += len(out.outputs[0].token_ids)
    await engine.shutdown()
    assert n == 2, n
    print("ok")

asyncio.run(main())
"""


def test_async_engine_needs_no_web_packages(llama_dir):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(llama_dir)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
