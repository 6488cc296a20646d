"""Programmatic dependent launch (PDL) for lodger's Triton kernels, on Hopper and newer.

A decode step at small batch is a chain of short dependent kernels, and between two of them
the card drains the first grid, then launches and schedules the second. With PDL the next
kernel in the stream is launched while this one is still running: once every program of
this grid has started (`gdc_launch_dependents`), the next grid's programs are placed on the
SMs and wait in `gdc_wait` until this grid has finished and its memory writes are visible.

Every lodger kernel calls `await_prior_kernel(USE_PDL)` before its first global store and
before it loads anything a kernel may write (weights, which only the loader writes, may load
first: the GEMV's first weight chunk and the RMSNorm weight do). So each kernel still sees
all earlier kernels' writes, and cannot overwrite memory an earlier kernel still reads:
kernel N+1 waits for kernel N, which waited for N-1 before touching anything they share.
A kernel launched without PDL (cuBLAS, torch) starts after the previous one as usual, and
the next waits for it as usual; CUDA graphs keep the PDL edges.

The call lets the next kernel launch before it waits (USE_PDL == EARLY): a short kernel
waiting on a long one then already has its successor resident, so a GEMV two kernels down
the chain is on the SMs while the latency-bound kernels before it run, and can pull its
weights into L2 meanwhile (`prefetch_to_l2`). Letting the next kernel launch early changes
nothing in what it sees: its wait still returns only when this whole grid has finished.

`LODGER_PDL=0` in the environment turns PDL off, `LODGER_PDL=late` lets the next kernel
launch only after the wait (A/B runs, or a driver that misbehaves); `LODGER_L2_PREFETCH=0`
turns the GEMV's weight prefetch off.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

OFF, LATE, EARLY = 0, 1, 2  # values of a kernel's USE_PDL


@triton.jit
def await_prior_kernel(USE_PDL: tl.constexpr):
    """Under PDL: let the next kernel launch (EARLY) and wait for the previous kernel's
    grid and its writes (LATE: the other way round). A no-op otherwise (and under the CPU
    interpreter)."""
    if USE_PDL == 2:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    elif USE_PDL == 1:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_to_l2(ptrs, PREFETCH: tl.constexpr):
    """Ask L2 for the 128-byte lines at `ptrs` (every pointer valid) without waiting for
    them: a kernel resident before its wait fetches what it will read, while the kernels
    before it, which leave the memory bus idle, finish."""
    if PREFETCH:
        tl.inline_asm_elementwise(
            "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs],
            dtype=tl.int32, is_pure=False, pack=1,
        )  # fmt: skip


def _triton_supports_pdl() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in CUDAOptions.__dataclass_fields__


@functools.cache
def _mode(device_index: int) -> int:
    setting = os.environ.get("LODGER_PDL", "1")
    if setting == "0" or os.environ.get("TRITON_INTERPRET") == "1":
        return OFF
    major, _ = torch.cuda.get_device_capability(device_index)
    if major < 9 or not _triton_supports_pdl():
        return OFF
    return LATE if setting == "late" else EARLY


def launch_options(device: torch.device) -> dict[str, int | bool]:
    """Keyword arguments for a launch of a kernel that calls await_prior_kernel(USE_PDL):
    USE_PDL for the kernel (OFF, LATE or EARLY), plus launch_pdl=True for Triton where
    the card supports PDL."""
    if device.type != "cuda":
        return {"USE_PDL": OFF}
    index = torch.cuda.current_device() if device.index is None else device.index
    mode = _mode(index)
    if mode == OFF:
        return {"USE_PDL": OFF}
    return {"USE_PDL": mode, "launch_pdl": True}


def prefetch_enabled(options: dict[str, int | bool]) -> bool:
    """Whether a kernel launched with `options` should prefetch before its wait."""
    return options["USE_PDL"] != OFF and os.environ.get("LODGER_L2_PREFETCH", "1") != "0"
