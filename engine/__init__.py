"""lodger.engine: the inference engine (scheduling, KV blocks, model execution, sampling).

Names are imported lazily so that the plain-Python parts (scheduler, block manager,
sampling params) can be used without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "LLM": "lodger.engine.llm",
    "SamplingParams": "lodger.engine.sampling_params",
    "EngineConfig": "lodger.engine.config",
    "EngineCore": "lodger.engine.engine_core",
    "RequestOutput": "lodger.engine.outputs",
    "CompletionOutput": "lodger.engine.outputs",
    "Logprob": "lodger.engine.outputs",
    "EngineStats": "lodger.engine.stats",
    "AsyncEngine": "lodger.engine.async_engine",
    "EngineDeadError": "lodger.engine.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lodger.engine' has no attribute {name!r}")
    return getattr(import_module(module), name)
