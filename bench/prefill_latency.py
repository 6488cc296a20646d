"""Time to first token of one request at a time, by prompt length (not a test).

    python -m bench.prefill_latency --shape llama3-8b --lengths 8,32,128,512 --repeats 4

For each prompt length, sends `--repeats` one-token requests one after another through
`EngineCore` (greedy, random prompt ids) and prints each one's wall time from add_request to
its last step: the first request of a length shows what a new shape costs (Triton kernel
variants loaded or compiled, allocator growth), the later ones the steady latency. Then one
more request of that length under torch.profiler: the share of its wall time the GPU was
busy, which says whether the host (Python, launches) or the kernels bound the prefill.
`--cprofile N` adds one request per length under cProfile and prints its N costliest
functions by own time: where the host's share goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import sys
import time
from pathlib import Path

from bench.profile_lodger import profile_window
from bench.records import run_context
from bench.run_lodger import graph_summary
from bench.shapes import SHAPES, checkpoint_vocab_size
from bench.throughput import DEFAULT_CHECKPOINTS, resolve_model
from bench.worker import parse_option
from bench.workloads import warmup_request


def one_request(core, request_id: str, prompt: list[int], params) -> float:
    """Wall seconds from add_request until the engine has nothing left to do."""
    start = time.perf_counter()
    core.add_request(request_id, prompt, params)
    while core.has_unfinished_requests():
        core.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--lengths", default="8,32,128,512")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--option", action="append", default=[])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N",
                        help="print the N costliest functions of one more request")
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.lengths.split(",")]

    from lodger.engine import LLM, SamplingParams

    model_dir, label = resolve_model(args)
    vocab_size = checkpoint_vocab_size(model_dir)
    llm = LLM(model=str(model_dir), **dict(parse_option(o) for o in args.option))
    core = llm.engine
    print(f"{label}: {graph_summary(llm) or 'no CUDA graphs'}", flush=True)
    warm_prompt, warm_tokens = warmup_request()
    llm.generate([{"prompt_token_ids": warm_prompt}], SamplingParams(max_tokens=warm_tokens),
                 use_tqdm=False)
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    rng = random.Random(0)
    results = []
    for length in lengths:
        # fresh prompts throughout: a repeated one would hit the prefix cache
        prompts = [[rng.randrange(vocab_size) for _ in range(length)]
                   for _ in range(args.repeats + 2)]
        walls_ms = [round(1000 * one_request(core, f"l{length}-{i}", p, params), 3)
                    for i, p in enumerate(prompts[: args.repeats])]
        core.add_request(f"l{length}-profiled", prompts[-2], params)
        window = profile_window(core, num_steps=10**6)
        results.append({"prompt_tokens": length, "wall_ms": walls_ms, "profiled": window})
        if args.cprofile:
            profiler = cProfile.Profile()
            profiler.runcall(one_request, core, f"l{length}-cprofile", prompts[-1], params)
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.cprofile)
            print(text.getvalue(), flush=True)
        print(f"{label} prompt {length:5d}: wall ms {walls_ms}; profiled "
              f"{1000 * window['wall_s']:.2f} ms, GPU busy {window['gpu_busy_share']:.0%}; "
              f"top {[(k['name'][:40], k['ms']) for k in window['top_kernels'][:4]]}",
              flush=True)
    if args.out:
        record = {"shape": label, "options": args.option, "results": results,
                  **graph_summary(llm), **run_context()}
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
