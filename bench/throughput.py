"""Offline throughput of lodger and the HF transformers peers, same card, same run.

    python -m bench.throughput --shape qwen3-0.6b --workloads nano,fixed-256-256-1024,batch1
    python -m bench.throughput --model lodger_pkg/default_model --workloads batch1 --threads 2
    python -m bench.throughput --tiny          # CPU smoke run: tiny shape, small workloads

Each engine runs in a process of its own, one after the other, on every workload, killed
(with its process group) past --timeout seconds or past what is left of --budget, the
whole run's seconds; each lodger record gets `vs`: its throughput divided by each peer's
on the same workload, and every record `worker_s`, its engine process's wall time.
Records are appended as JSON lines to --out (bench/results/offline.jsonl by default; a
--tiny run writes nowhere unless --out is given).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.records import RESULTS_DIR, append_records, run_context
from bench.shapes import SHAPES, build_checkpoint
from bench.worker import ENGINES, RECORD_PREFIX, parse_option
from bench.workloads import parse_workload

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINTS = REPO_ROOT / "bench" / "checkpoints"
TINY_WORKLOADS = "fixed-32-16-8,batch1-8-16"


def run_worker(engine: str, model_dir: Path, workloads: str, options: list[str],
               threads: int | None, timeout_s: float, command: str) -> list[dict]:
    """Run bench.worker for one engine; its records, or one error record per workload.

    The worker is killed at timeout_s whether or not it is printing (a compile can be silent
    for minutes), together with its process group (inductor's compile workers)."""
    argv = [sys.executable, "-m", "bench.worker", "--engine", engine, "--model", str(model_dir),
            "--workloads", workloads]
    for option in options:
        argv += ["--option", option]
    if threads:
        argv += ["--threads", str(threads)]
    env = {**os.environ, "LODGER_BENCH_COMMAND": command, "PYTHONUNBUFFERED": "1"}
    records, tail = [], []
    print(f"== {engine}: {workloads} (at most {timeout_s:.0f} s)", flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def pump() -> None:
        for line in proc.stdout:
            if line.startswith(RECORD_PREFIX):
                records.append(json.loads(line[len(RECORD_PREFIX):]))
            else:
                tail[:] = (tail + [line.rstrip()])[-20:]
                print(f"   {engine}| {line.rstrip()}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    error = None
    try:
        returncode = proc.wait(timeout=max(timeout_s, 0.0))
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout_s:.0f} s"
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
    reader.join(timeout=10)
    worker_s = round(time.monotonic() - start, 1)
    print(f"== {engine} done in {worker_s} s", flush=True)
    if error is None and returncode != 0:
        error = f"exit code {returncode}: " + " / ".join(tail[-3:])
    for record in records:
        record["worker_s"] = worker_s
    done = {r["workload"] for r in records}
    for spec in workloads.split(","):
        if spec not in done:
            records.append({"kind": "offline", "engine": engine, "workload": spec,
                            "error": error or "no record"})
    return records


def add_ratios(records: list[dict]) -> None:
    """lodger's output tok/s over each peer's, per workload, as record['vs']."""
    by_key = {(r["workload"], r["engine"]): r for r in records if "error" not in r}
    for (workload, engine), record in by_key.items():
        if engine != "lodger":
            continue
        record["vs"] = {
            peer: round(record["output_tok_per_s"] / by_key[(workload, peer)]["output_tok_per_s"],
                        3)
            for peer in ENGINES if peer != "lodger" and (workload, peer) in by_key
        }


def summary_line(record: dict) -> str:
    if "error" in record:
        return f"{record['workload']:<24} {record['engine']:<10} ERROR {record['error']}"
    line = (f"{record['workload']:<24} {record['engine']:<10} "
            f"{record['output_tok_per_s']:>11.1f} tok/s {record['req_per_s']:>8.2f} req/s "
            f"{record['elapsed_s']:>8.2f} s")
    if "ms_per_token" in record:
        line += f" {record['ms_per_token']:.2f} ms/token"
    if record.get("vs"):
        line += " vs " + ", ".join(f"{k} x{v}" for k, v in record["vs"].items())
    return line


def resolve_model(args) -> tuple[Path, str]:
    """(checkpoint dir, shape label) from --model or --shape."""
    if args.model is not None:
        return args.model, args.model.resolve().name
    start = time.perf_counter()
    path = build_checkpoint(args.shape, args.checkpoints, dtype=args.dtype)
    print(f"checkpoint {path} ready in {time.perf_counter() - start:.1f} s", flush=True)
    return path, args.shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint dir instead")
    parser.add_argument("--workloads", default="nano,fixed-256-256-1024,batch1")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--option", action="append", default=[],
                        help="lodger EngineConfig field as key=value (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dtype", default="bfloat16", help="dtype of a built checkpoint")
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per engine")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run, checkpoint included: each engine gets "
                             "the least of --timeout and what is left")
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file to append to")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run (tiny shape)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.shape = "tiny"
        if args.workloads == parser.get_default("workloads"):
            args.workloads = TINY_WORKLOADS
    elif args.out is None:
        args.out = RESULTS_DIR / "offline.jsonl"
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"--engines: unknown {unknown}; allowed: {list(ENGINES)}")
    for spec in args.workloads.split(","):
        parse_workload(spec)  # fail before any engine starts
    for option in args.option:
        parse_option(option)
    context = run_context(["bench/throughput.py", *(argv if argv is not None else sys.argv[1:])])
    start = time.monotonic()
    model_dir, label = resolve_model(args)
    records = []
    for engine in engines:
        limit = args.timeout
        if args.budget is not None:
            limit = min(limit, args.budget - (time.monotonic() - start))
        if limit < 1:
            records += [{"kind": "offline", "engine": engine, "workload": spec,
                         "error": f"not run: the run's {args.budget:.0f} s budget was spent"}
                        for spec in args.workloads.split(",")]
            continue
        records += run_worker(engine, model_dir, args.workloads, args.option, args.threads,
                              limit, context["command"])
    add_ratios(records)
    for record in records:
        record.update({**context, "shape": label, "card": record.get("card", context["card"])})
    print("\n".join(summary_line(r) for r in records), flush=True)
    if args.out is not None:
        append_records(args.out, records)
        print(f"appended {len(records)} records to {args.out}")
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
