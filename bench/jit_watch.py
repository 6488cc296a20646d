"""Triton kernels built while a benchmark's timed part runs.

A Triton kernel is built (compiled, or loaded from the on-disk cache) the first time a
process launches it with a new specialization: other constexprs, another dtype, an int
argument that becomes or stops being 1 or a multiple of 16, a pointer that loses its
16-byte alignment. On a fresh machine that is a compile of 0.1-1 s inside a step, so a
timed run that builds kernels measures the compiler, and a server's first requests stall.
`JitWatch` counts those builds through Triton's JIT hooks (triton >= 3.4's knobs; on an
older Triton, or without Triton, it watches nothing and says so).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class JitBuild:
    """One kernel specialization built: its signature as Triton prints it, and how long."""

    kernel: str
    seconds: float


@dataclass
class JitWatch:
    """Kernel builds seen while `watching()`; `available` is False where hooks are missing."""

    available: bool = False
    builds: list[JitBuild] = field(default_factory=list)

    @property
    def build_s(self) -> float:
        return sum(build.seconds for build in self.builds)

    def summary(self) -> dict:
        """Record fields: the count, the seconds, and each build's signature."""
        if not self.available:
            return {"jit_builds": None}
        return {"jit_builds": len(self.builds), "jit_build_s": round(self.build_s, 3),
                "jit_built": [f"{b.kernel} {b.seconds:.2f} s" for b in self.builds]}

    @contextlib.contextmanager
    def watching(self) -> Iterator[JitWatch]:
        runtime = _hook_knobs()
        if runtime is None:
            yield self
            return
        self.available = True
        started: dict[object, tuple[str, float]] = {}

        def before(**hook_args):
            kernel = _describe(hook_args)
            started[str(hook_args.get("key"))] = (kernel, time.perf_counter())
            return False  # False: go on and build

        def after(**hook_args):
            kernel, start = started.pop(str(hook_args.get("key")), ("?", time.perf_counter()))
            self.builds.append(JitBuild(kernel, time.perf_counter() - start))

        saved = runtime.jit_cache_hook, runtime.jit_post_compile_hook
        runtime.jit_cache_hook, runtime.jit_post_compile_hook = before, after
        try:
            yield self
        finally:
            runtime.jit_cache_hook, runtime.jit_post_compile_hook = saved


def _describe(hook_args: dict) -> str:
    """The kernel's name and what it was specialized on: the arguments Triton took as
    16-divisible (pointers: 16-byte aligned) and the constants, as far as this Triton says."""
    fn = hook_args.get("fn")
    name = getattr(fn, "name", None) or str(hook_args.get("repr") or fn)
    compile_args = hook_args.get("compile") or {}
    try:
        names = list(compile_args["signature"])
        attrs = compile_args["configs"][0]
        aligned = sorted(names[index[0]] for index, values in attrs.items()
                         if any(value[0] == "tt.divisibility" for value in values))
        constants = sorted(f"{names[index[0]]}={value}"
                           for index, value in compile_args["constants"].items()
                           if not isinstance(value, str) or len(value) < 16)
        return f"{name} div16({', '.join(aligned)}) const({', '.join(constants)})"
    except (KeyError, IndexError, TypeError, AttributeError):
        return name


def _hook_knobs():
    """triton.knobs.runtime when it has both JIT hooks, else None."""
    try:
        import triton
    except ImportError:
        return None
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is None or not all(hasattr(runtime, name)
                                  for name in ("jit_cache_hook", "jit_post_compile_hook")):
        return None
    return runtime
