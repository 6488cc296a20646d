"""Online serving benchmark: `lodger serve` on loopback, driven at Poisson request rates.

    python -m bench.serving --shape qwen3-0.6b --workload fixed-1024-128-400 --rates 4,16,inf
    python -m bench.serving --model lodger_pkg/default_model --workload fixed-32-256-5 \\
        --rates inf --max-concurrency 1 --threads 2     # one stream on 2 CPU threads
    python -m bench.serving --tiny                      # CPU smoke run

One server for the whole sweep; a short warm-up request, then per rate one bounded run
(the workload's requests, at most --max-seconds). Reports request and token throughput and
TTFT / TPOT / ITL / end-to-end latency percentiles, one record per rate, appended as JSON
lines to --out (bench/results/serving.jsonl by default; a --tiny run writes nowhere
unless --out is given).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.load import run_load
from bench.metrics import summarize
from bench.records import RESULTS_DIR, append_records, run_context
from bench.shapes import SHAPES, checkpoint_vocab_size
from bench.throughput import DEFAULT_CHECKPOINTS, REPO_ROOT, resolve_model
from bench.worker import parse_option
from bench.workloads import Workload, parse_workload, warmup_request

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_argv(model_dir: Path, port: int, options: list[str], max_requests: int) -> list[str]:
    """`python -m lodger serve ...` with each key=value option as its flag."""
    argv = [sys.executable, "-m", "lodger", "serve", "--model", str(model_dir), "--host", HOST,
            "--port", str(port), "--max-concurrent-requests", str(max_requests),
            "--log-level", "warning"]
    for option in options:
        key, value = parse_option(option)
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            argv += [flag, str(value)]
    return argv


class Server:
    """The server process, its log in a temporary file; stopped on exit."""

    def __init__(self, argv: list[str], threads: int | None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads
        # closed by stop(), which the caller runs in a finally block
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix="lodger-serve-", suffix=".log")
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, base_url: str, timeout_s: float) -> str:
        """Poll /ready until the model is loaded; returns the served model name."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(base_url + "/ready", timeout=5).status_code == 200:
                    return httpx.get(base_url + "/v1/models", timeout=5).json()["data"][0]["id"]
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server was not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, num_lines: int = 20) -> str:
        self.log.flush()
        self.log.seek(0)
        return "".join(self.log.readlines()[-num_lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def parse_rates(text: str) -> list[float]:
    rates = [float(r) for r in text.split(",")]  # float("inf") parses "inf"
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive numbers or inf, got {text!r}")
    return rates


def serving_record(workload: Workload, rate: float, max_concurrency: int | None,
                   summary: dict) -> dict:
    return {"kind": "serving", "engine": "lodger", "workload": workload.name,
            "request_rate": "inf" if rate == float("inf") else rate,
            "max_concurrency": max_concurrency, **summary}


def summary_line(record: dict) -> str:
    return (f"rate {record['request_rate']!s:>6} completed {record['completed']:>4} "
            f"failed {record['failed']:>3} {record['req_per_s']:>8.2f} req/s "
            f"{record['output_tok_per_s']:>10.1f} tok/s  TTFT p50 {record['ttft_ms']['p50']:.1f} "
            f"p99 {record['ttft_ms']['p99']:.1f} ms  TPOT p50 {record['tpot_ms']['p50']:.2f} ms  "
            f"ITL p50 {record['itl_ms']['p50']:.2f} p99 {record['itl_ms']['p99']:.2f} ms")


def run_sweep(base_url: str, model_name: str, workload: Workload, args) -> list[dict]:
    warm_prompt, warm_tokens = warmup_request()
    warm = Workload("warmup", [warm_prompt], [warm_tokens], temperature=0.0)
    asyncio.run(run_load(base_url, model_name, warm, float("inf"), None, args.max_seconds))
    records = []
    for rate in args.rates:
        results, duration = asyncio.run(run_load(base_url, model_name, workload, rate,
                                                 args.max_concurrency, args.max_seconds))
        records.append(serving_record(workload, rate, args.max_concurrency,
                                      summarize(results, duration)))
        print(summary_line(records[-1]), flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint dir instead")
    parser.add_argument("--workload", default="fixed-1024-128-400",
                        help="requests of each rate's run (nano, fixed-IN-OUT-N, ...)")
    parser.add_argument("--rates", type=parse_rates, default=parse_rates("4,16,inf"),
                        help="comma-separated requests/s; inf sends everything at once")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="bound of each rate")
    parser.add_argument("--option", action="append", default=[],
                        help="lodger EngineConfig field as key=value (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="server's torch threads")
    parser.add_argument("--dtype", default="bfloat16", help="dtype of a built checkpoint")
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file to append to")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run (tiny shape)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.shape = "tiny"
        if args.workload == parser.get_default("workload"):
            args.workload = "fixed-32-8-6"
        if args.rates == parser.get_default("rates"):
            args.rates = [float("inf"), 20.0]
    elif args.out is None:
        args.out = RESULTS_DIR / "serving.jsonl"
    parse_workload(args.workload)  # a bad spec fails before the model is built
    context = run_context(["bench/serving.py", *(argv if argv is not None else sys.argv[1:])])
    model_dir, label = resolve_model(args)
    workload = parse_workload(args.workload, checkpoint_vocab_size(model_dir))
    port = free_port()
    base_url = f"http://{HOST}:{port}"
    max_requests = max(256, workload.num_requests)
    server = Server(server_argv(model_dir, port, args.option, max_requests), args.threads)
    try:
        start = time.perf_counter()
        model_name = server.wait_ready(base_url, args.startup_timeout)
        print(f"server ready in {time.perf_counter() - start:.1f} s", flush=True)
        records = run_sweep(base_url, model_name, workload, args)
    finally:
        server.stop()
    card = context["card"] if args.threads is None else _cpu_card(context["card"], args.threads)
    for record in records:
        record.update({**context, "card": card, "shape": label, "options": args.option})
    if args.out is not None:
        append_records(args.out, records)
        print(f"appended {len(records)} records to {args.out}")
    return 0 if all(r["failed"] == 0 for r in records) else 1


def _cpu_card(card: str, threads: int) -> str:
    """The card as the server saw it: the client's torch thread count is not the server's."""
    suffix = f", {threads} thread{'s' if threads > 1 else ''}"
    return card.rsplit(",", 1)[0] + suffix if card.startswith("CPU") else card


if __name__ == "__main__":
    sys.exit(main())
