"""Programmatic dependent launch (PDL) for lodger's Triton kernels, on Hopper and newer.

A decode step at small batch is a chain of short dependent kernels, and between two of them
the card drains the first grid, then launches and schedules the second. With PDL the next
kernel in the stream is launched while this one is still running: once every program of
this grid has started (`gdc_launch_dependents`), the next grid's programs are placed on the
SMs and wait in `gdc_wait` until this grid has finished and its memory writes are visible.

Every lodger kernel calls `await_prior_kernel(USE_PDL)` before its first global store and
before it loads anything the kernel before it may write. So each kernel still sees all
earlier kernels' writes, and cannot overwrite memory an earlier kernel still reads: kernel
N+1 waits for kernel N, which waited for N-1 before touching anything they share (and
N+1 only starts once every program of N has passed that wait, so N-1 has finished).

What no kernel of the step writes may load before the wait: weights, which only the loader
writes (the GEMV's first weight chunk and the RMSNorm weight do), and the step's inputs
(positions, slot mapping, sequence lengths, query starts), which the runner copies in
before the step's first kernel (the rotary pass and decode attention do). Not every
argument that starts on the host stays untouched, though: when the sampler has processed
the logits, a torch op rewrites the temperatures right before the draw, so the sampling
kernel loads everything after its wait.

A kernel launched without PDL (cuBLAS, torch) starts after the previous one as usual, and
the next waits for it as usual; CUDA graphs keep the PDL edges.

`LODGER_PDL=0` in the environment turns it off (A/B runs, or a driver that misbehaves).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@triton.jit
def await_prior_kernel(USE_PDL: tl.constexpr):
    """Under PDL: wait for the previous kernel's grid (and its writes), then let the next
    kernel launch. A no-op otherwise (and under the CPU interpreter)."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


def _triton_supports_pdl() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in CUDAOptions.__dataclass_fields__


@functools.cache
def _enabled(device_index: int) -> bool:
    if os.environ.get("LODGER_PDL", "1") == "0" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    major, _ = torch.cuda.get_device_capability(device_index)
    return major >= 9 and _triton_supports_pdl()


def launch_options(device: torch.device) -> dict[str, bool]:
    """Keyword arguments for a launch of a kernel that calls await_prior_kernel(USE_PDL):
    USE_PDL for the kernel, plus launch_pdl=True for Triton where the card supports PDL."""
    if device.type != "cuda":
        return {"USE_PDL": False}
    index = torch.cuda.current_device() if device.index is None else device.index
    if not _enabled(index):
        return {"USE_PDL": False}
    return {"USE_PDL": True, "launch_pdl": True}
