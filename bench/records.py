"""Result records: one JSON object per engine and workload, appended as a line to a file.

Each record says where and when it was measured (card, date, commit, command) next to the
numbers, so a table built from the file can always be traced back to a run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from bench.workloads import Workload

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def card_name() -> str:
    """The GPU's name, or the CPU's with the torch thread count."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"CPU {cpu}, {threads} thread{'s' if threads > 1 else ''}"


def commit() -> str:
    """LODGER_COMMIT when set (the device machine's copy of the tree has no .git), else git's."""
    if os.environ.get("LODGER_COMMIT"):
        return os.environ["LODGER_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_context(argv: list[str] | None = None) -> dict:
    """Fields shared by every record of one run of a harness command."""
    args = sys.argv if argv is None else argv
    command = (os.environ.get("LODGER_BENCH_COMMAND")
               or f"python -m {_module_name(args[0])} {shlex.join(args[1:])}".rstrip())
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit(),
        "card": card_name(),
        "command": command,
    }


def _module_name(script: str) -> str:
    path = Path(script)
    return f"bench.{path.stem}" if path.parent.name == "bench" else path.stem


def offline_record(engine: str, workload: Workload, elapsed_s: float, **extra) -> dict:
    """Throughput figures of one engine on one workload (EOS ignored: outputs are exact)."""
    assert elapsed_s > 0, "elapsed time must be positive"
    record = {
        "kind": "offline",
        "engine": engine,
        "workload": workload.name,
        "num_requests": workload.num_requests,
        "num_input_tokens": workload.num_input_tokens,
        "num_output_tokens": workload.num_output_tokens,
        "elapsed_s": round(elapsed_s, 6),  # µs: rates derived from it stay exact to 1e-3
        "output_tok_per_s": round(workload.num_output_tokens / elapsed_s, 2),
        "total_tok_per_s": round(
            (workload.num_input_tokens + workload.num_output_tokens) / elapsed_s, 2),
        "req_per_s": round(workload.num_requests / elapsed_s, 3),
    }
    if workload.is_batch1:
        record["ms_per_token"] = round(1000 * elapsed_s / workload.num_output_tokens, 3)
    record.update(extra)
    return record


def append_records(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def read_records(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        with open(path) as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records
