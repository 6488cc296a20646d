"""Where an engine step's time goes: per-phase wall time over a whole workload, and a
torch.profiler table of a few steady decode steps.

    python -m bench.profile_steps --shape qwen3-0.6b --workload nano [--option k=v ...]

Phases of EngineCore.step(): schedule, execute (input preparation + forward + sampling,
ending in the one device->host copy, so it includes the GPU time), update (scheduler),
outputs (detokenization, stop strings, delta objects). Printed as totals and per step.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

from bench.shapes import SHAPES, build_checkpoint
from bench.worker import parse_option
from bench.workloads import parse_workload

REPO_ROOT = Path(__file__).resolve().parent.parent
VERBOSE = True


def timed_step(core, totals: dict[str, float]) -> list:
    """One EngineCore.step() with each phase timed into `totals` (seconds)."""
    t0 = time.perf_counter()
    scheduled = core.scheduler.schedule()
    t1 = time.perf_counter()
    if scheduled.total_num_scheduled_tokens == 0:
        return []
    runner_output = core.runner.execute(scheduled)
    t2 = time.perf_counter()
    updated = core.scheduler.update(scheduled, runner_output.sampled_token_ids)
    t3 = time.perf_counter()
    logprobs = {r.request_id: p for r, p in zip(scheduled.scheduled, runner_output.logprobs,
                                                 strict=True) if p is not None}
    outputs = core.outputs.process(updated, logprobs)
    t4 = time.perf_counter()
    kind = "decode" if scheduled.total_num_scheduled_tokens == len(scheduled.scheduled) else "mixed"
    if kind == "mixed" and VERBOSE:
        print(f"mixed step: {scheduled.total_num_scheduled_tokens} tokens, "
              f"{len(scheduled.scheduled)} seqs, execute {1e3 * (t2 - t1):.1f} ms")
    for phase, seconds in (("schedule", t1 - t0), ("execute", t2 - t1), ("update", t3 - t2),
                           ("outputs", t4 - t3)):
        totals[f"{kind}.{phase}"] += seconds
    totals[f"{kind}.steps"] += 1
    return outputs


def trace_steps(core, totals: dict[str, float], num_steps: int, kind: str) -> None:
    """torch.profiler over `num_steps` steps; prints the kernels by CUDA time."""
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(num_steps):
            timed_step(core, totals)
        torch.cuda.synchronize()
    print(f"---- {num_steps} {kind} steps")
    averages = prof.key_averages()
    for order in ("self_cuda_time_total", "self_cpu_time_total"):
        print(averages.table(sort_by=order, row_limit=15, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--workload", default="nano")
    parser.add_argument("--option", type=parse_option, action="append", default=[])
    parser.add_argument("--checkpoints", type=Path, default=REPO_ROOT / "bench" / "checkpoints")
    parser.add_argument("--trace-steps", type=int, default=5)
    args = parser.parse_args()

    from lodger.engine import LLM, SamplingParams

    model_dir = build_checkpoint(args.shape, args.checkpoints)
    llm = LLM(model=str(model_dir), **dict(args.option))
    core = llm.engine
    workload = parse_workload(args.workload)
    for i, (prompt, max_tokens) in enumerate(zip(workload.prompts, workload.max_tokens,
                                                 strict=True)):
        params = SamplingParams(temperature=workload.temperature, ignore_eos=True,
                                max_tokens=max_tokens)
        core.add_request(str(i), prompt, params)
    totals: dict[str, float] = defaultdict(float)
    start = time.perf_counter()
    traced = {"mixed": False, "decode": False}
    while core.has_unfinished_requests():
        kind = "decode" if core.scheduler.stats().num_waiting == 0 else "mixed"
        if not traced[kind] and totals[f"{kind}.steps"] > 2 + 18 * (kind == "decode"):
            traced[kind] = True
            trace_steps(core, totals, args.trace_steps if kind == "decode" else 2, kind)
            continue
        timed_step(core, totals)
    elapsed = time.perf_counter() - start
    print(f"{workload.name}: {workload.num_output_tokens} output tokens in {elapsed:.2f} s "
          f"= {workload.num_output_tokens / elapsed:.0f} tok/s (incl. {args.trace_steps} "
          "profiled steps)")
    for kind in ("mixed", "decode"):
        steps = totals[f"{kind}.steps"]
        if not steps:
            continue
        seconds = {phase: totals[f"{kind}.{phase}"] for phase in
                   ("schedule", "execute", "update", "outputs")}
        parts = "  ".join(f"{phase} {s:.2f}s ({1e3 * s / steps:.2f} ms)"
                          for phase, s in seconds.items())
        print(f"{kind:6s} steps {int(steps):5d}: {parts}")


if __name__ == "__main__":
    main()
