"""One engine on a list of workloads, in a process of its own (so each engine starts with the
whole GPU); prints one `BENCH_RECORD {json}` line per workload for bench.throughput.

    python -m bench.worker --engine lodger --model DIR --workloads nano,batch1 [--option k=v]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.records import card_name
from bench.shapes import checkpoint_vocab_size
from bench.workloads import parse_workload

ENGINES = ("lodger", "hf-static", "hf-cb")
RECORD_PREFIX = "BENCH_RECORD "


def parse_option(text: str) -> tuple[str, object]:
    """`key=value` with a JSON value (true, 512, 0.8) or else a plain string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"an option must look like key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--workloads", required=True, help="comma-separated workload specs")
    parser.add_argument("--option", type=parse_option, action="append", default=[],
                        help="lodger EngineConfig field as key=value (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    vocab_size = checkpoint_vocab_size(args.model)
    workloads = [parse_workload(spec, vocab_size) for spec in args.workloads.split(",")]
    if args.engine == "lodger":
        from bench.run_lodger import run_lodger

        records = run_lodger(args.model, workloads, dict(args.option))
    else:
        from bench.run_hf import run_hf

        records = run_hf(args.engine, args.model, workloads)
    card = card_name()
    for record in records:
        print(RECORD_PREFIX + json.dumps({**record, "card": card}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
