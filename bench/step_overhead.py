"""Per-step CPU overhead of the engine loop's Python work, without the model.

Measures schedule() + update() for a batch of requests that are all decoding (the steady
state of a busy server), with prefix caching on and off. The model runner's input
preparation (block tables, slot mapping, positions) belongs in the same budget: pass it as
`prepare_inputs` to `measure_step_overhead` and it is timed inside each step.

    .venv/bin/python bench/step_overhead.py [--num-requests 256] [--num-steps 2000]

Goal for the whole step overhead (scheduler + input preparation): <= 1 ms at 256 requests.
The third line of output times both together.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from lodger.engine.request import Request
from lodger.engine.sampling_params import SamplingParams
from lodger.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput

BLOCK_SIZE = 16


def decoding_scheduler(num_requests: int, num_steps: int, enable_prefix_caching: bool) -> Scheduler:
    """A scheduler whose `num_requests` requests have all finished their prompts.

    Prompt lengths are staggered so that block boundaries (a new block, a block hashed)
    spread evenly over the steps, as they do in real traffic.
    """
    max_tokens = num_steps + 64  # the prefill steps already decode the first requests
    max_model_len = 128 + BLOCK_SIZE + max_tokens
    num_blocks = 1 + num_requests * (-(-max_model_len // BLOCK_SIZE))
    scheduler = Scheduler(SchedulerConfig(
        block_size=BLOCK_SIZE, num_blocks=num_blocks, max_num_seqs=num_requests,
        max_num_batched_tokens=8192, max_model_len=max_model_len,
        enable_prefix_caching=enable_prefix_caching,
    ))
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=max_tokens)
    for i in range(num_requests):
        prompt = [(i * 7 + j) % 32000 for j in range(128 + i % BLOCK_SIZE)]
        scheduler.add_request(Request(f"r{i}", prompt, params, 2, time.monotonic()))
    while any(r.num_output_tokens == 0 for r in scheduler.requests.values()):
        out = scheduler.schedule()
        scheduler.update(out, fake_sampled(out))
    return scheduler


def fake_sampled(out: SchedulerOutput) -> list[int | None]:
    return [42 if samples else None for samples in out.samples]


@dataclass(slots=True)
class StepTimings:
    wall_us: list[float]  # wall-clock microseconds per step
    cpu_us: list[float]  # this thread's CPU microseconds per step (ignores other processes)


def measure_step_overhead(
    scheduler: Scheduler,
    num_steps: int,
    prepare_inputs: Callable[[SchedulerOutput], object] | None = None,
) -> StepTimings:
    """Time each step of schedule() [+ prepare_inputs(out)] + update()."""
    timings = StepTimings([], [])
    for _ in range(num_steps):
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        out = scheduler.schedule()
        if prepare_inputs is not None:
            prepare_inputs(out)
        sampled = [42] * len(out.scheduled)  # every request decodes: each one samples
        scheduler.update(out, sampled)
        timings.cpu_us.append((time.thread_time_ns() - cpu) / 1000)
        timings.wall_us.append((time.perf_counter_ns() - wall) / 1000)
        assert len(out.scheduled) == len(scheduler.running), "not a steady decode batch"
    return timings


def summary(values: list[float]) -> str:
    p90 = statistics.quantiles(values, n=10)[-1]
    return f"median {statistics.median(values):7.1f}  p90 {p90:7.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--num-steps", type=int, default=2000)
    args = parser.parse_args()
    print(f"schedule() + update(), {args.num_requests} requests decoding, "
          f"block_size {BLOCK_SIZE}, {args.num_steps} steps")
    for caching, with_inputs in ((True, False), (False, False), (True, True)):
        scheduler = decoding_scheduler(args.num_requests, args.num_steps + 100, caching)
        prepare = runner_input_preparation(scheduler) if with_inputs else None
        measure_step_overhead(scheduler, 100, prepare)  # warm-up
        timings = measure_step_overhead(scheduler, args.num_steps, prepare)
        print(f"  prefix caching {'on ' if caching else 'off'}"
              f"{' + runner input preparation' if with_inputs else ''}: "
              f"wall {summary(timings.wall_us)} us   cpu {summary(timings.cpu_us)} us")


def runner_input_preparation(scheduler: Scheduler) -> Callable[[SchedulerOutput], object]:
    """The model runner's per-step input building (block tables, slots, positions, one
    host buffer) on the CPU, as ModelRunner.prepare_inputs does it."""
    import torch

    from lodger.engine.step_inputs import InputBuilder

    config = scheduler.config
    builder = InputBuilder(config.block_size, config.max_model_len, config.max_num_seqs,
                           config.max_num_batched_tokens, torch.device("cpu"))

    def prepare(out: SchedulerOutput) -> object:
        builder.drop(out.finished_request_ids)
        return builder.prepare(
            out.scheduled, out.num_scheduled_tokens, out.num_computed_tokens, out.samples
        )

    return prepare


if __name__ == "__main__":
    main()
