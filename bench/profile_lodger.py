"""Where lodger's engine step spends its time on a workload: host phases and GPU kernels.

    python -m bench.profile_lodger --shape qwen3-0.6b --workload nano --out profile.json

Runs the workload through `EngineCore.step()` with each host phase timed (schedule, model
launch, output processing, scheduler update; the rest of a step is mostly waiting for the GPU),
then profiles three windows with torch.profiler (the first steps, which carry prompt
tokens; decode-only steps once every prompt is in, at full batch; and the tail, when few
requests are left): the share of the window's
wall time the GPU was busy, and the kernels that took it. A GPU busy well under 100% means
the host (Python, launches, synchronisation) limits throughput; near 100%, the kernels do.
`step_kinds` splits the run's wall time by kind of step (steps with prompt tokens, and
decode-only steps by batch size), which says which part of the run the time goes to.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from bench.records import run_context
from bench.shapes import SHAPES, checkpoint_vocab_size
from bench.throughput import DEFAULT_CHECKPOINTS, resolve_model
from bench.worker import parse_option
from bench.workloads import parse_workload, warmup_request

# Host phases of a step: schedule, launch the model (input preparation and kernel
# launches), process outputs (detokenize), update the scheduler. What is left of the step's
# wall time is mostly waiting for the GPU.
PHASES = (("scheduler", "schedule"), ("runner", "launch"), ("outputs", "process"),
          ("scheduler", "update"))


def time_phases(core, totals: dict[str, float]) -> None:
    """Wrap the step's phase methods on the instances so each call adds to totals[name]."""
    for owner_name, method_name in PHASES:
        owner = getattr(core, owner_name)
        method = getattr(owner, method_name, None)
        if method is None:  # the engine no longer has this phase: leave it out
            continue

        def timed(*args, _method=method, _name=method_name, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                totals[_name] += time.perf_counter() - start

        setattr(owner, method_name, timed)


# decode-only steps are grouped by batch size: at least each bound, largest first
BATCH_BOUNDS = (192, 64, 16, 1)


def step_kind(num_tokens: int, num_seqs: int) -> str:
    if num_tokens > num_seqs:
        return "with prompt tokens"
    bound = next(b for b in BATCH_BOUNDS if num_seqs >= b)
    return f"decode, batch >= {bound}"


def summarise_steps(steps: list[tuple[float, int, int]]) -> dict:
    """(wall s, tokens, sequences) per step -> per kind: steps, seconds, ms/step, batch."""
    kinds: dict[str, list] = defaultdict(list)
    for wall, num_tokens, num_seqs in steps:
        kinds[step_kind(num_tokens, num_seqs)].append((wall, num_tokens, num_seqs))
    return {
        kind: {"steps": len(rows), "s": round(sum(r[0] for r in rows), 3),
               "ms_per_step": round(1000 * sum(r[0] for r in rows) / len(rows), 3),
               "mean_batch": round(sum(r[2] for r in rows) / len(rows), 1),
               "tokens": sum(r[1] for r in rows),
               # the slowest steps: a stall (a kernel compiled mid-run, a GC pause) shows here
               "slowest_ms": sorted((round(1000 * r[0], 1) for r in rows), reverse=True)[:5]}
        for kind, rows in sorted(kinds.items())
    }


def profile_window(core, num_steps: int) -> dict:
    """torch.profiler over num_steps steps: GPU busy share and the top kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        steps = 0
        while steps < num_steps and core.has_unfinished_requests():
            core.step()
            steps += 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kernels = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0.0)
        if device_us > 0:
            kernels.append((device_us, event.key, event.count))
    kernels.sort(reverse=True)
    busy_s = sum(k[0] for k in kernels) / 1e6
    return {"steps": steps, "wall_s": round(wall, 4),
            "gpu_busy_share": round(busy_s / wall, 3) if wall else 0.0,
            "top_kernels": [{"name": name[:120], "ms": round(us / 1000, 3), "calls": count}
                            for us, name, count in kernels[:15]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--workload", default="nano")
    parser.add_argument("--option", action="append", default=[])
    parser.add_argument("--window", type=int, default=50, help="decode steps to profile")
    parser.add_argument("--prefill-window", type=int, default=4,
                        help="first steps to profile (0: none)")
    parser.add_argument("--tail-batch", type=int, default=32,
                        help="profile the tail window once this few requests are left")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    from lodger.engine import LLM, SamplingParams

    parse_workload(args.workload)  # a bad spec fails before the model is built
    model_dir, label = resolve_model(args)
    workload = parse_workload(args.workload, checkpoint_vocab_size(model_dir))
    llm = LLM(model=str(model_dir), **dict(parse_option(o) for o in args.option))
    core = llm.engine
    warm_prompt, warm_tokens = warmup_request()
    llm.generate([{"prompt_token_ids": warm_prompt}], SamplingParams(max_tokens=warm_tokens),
                 use_tqdm=False)
    totals: dict[str, float] = defaultdict(float)
    time_phases(core, totals)
    scheduled = []  # (tokens, sequences) of each schedule() that launched a step
    timed_schedule = core.scheduler.schedule

    def schedule():
        out = timed_schedule()
        if out.scheduled:
            scheduled.append((out.total_num_scheduled_tokens, len(out.scheduled)))
        return out

    core.scheduler.schedule = schedule
    for i, (prompt, max_tokens) in enumerate(zip(workload.prompts, workload.max_tokens,
                                                  strict=True)):
        params = SamplingParams(temperature=workload.temperature, ignore_eos=True,
                                max_tokens=max_tokens)
        core.add_request(f"p{i}", prompt, params)
    num_steps, window, tail_window = 0, None, None
    steps: list[tuple[float, int, int]] = []  # outside the profiled windows
    start = time.perf_counter()
    prefill_window = profile_window(core, args.prefill_window) if args.prefill_window else None
    while core.has_unfinished_requests():
        stats = core.stats()
        if window is None and stats.num_waiting == 0 and stats.num_running >= 1:
            window = profile_window(core, args.window)  # decode-only: every prompt is in
            window["num_running"] = stats.num_running
            continue
        if (window is not None and tail_window is None and stats.num_waiting == 0
                and stats.num_running <= args.tail_batch):
            tail_window = profile_window(core, args.window)
            tail_window["num_running"] = stats.num_running
            continue
        num_scheduled = len(scheduled)
        step_start = time.perf_counter()
        core.step()
        if len(scheduled) > num_scheduled:
            steps.append((time.perf_counter() - step_start, *scheduled[-1]))
        num_steps += 1
    wall = time.perf_counter() - start
    num_steps += sum(w["steps"] for w in (prefill_window, window, tail_window) if w)
    summary = {
        "kind": "profile", **run_context(), "shape": label, "workload": workload.name,
        "wall_s": round(wall, 3), "num_steps": num_steps,
        "step_ms": round(1000 * wall / max(1, num_steps), 3),
        "phase_ms_per_step": {name: round(1000 * t / max(1, num_steps), 3)
                              for name, t in totals.items()},
        "rest_ms_per_step": round(1000 * (wall - sum(totals.values())) / max(1, num_steps), 3),
        "step_kinds": summarise_steps(steps),
        "prefill_window": prefill_window,
        "decode_window": window,
        "tail_window": tail_window,
    }
    print(json.dumps(summary, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
