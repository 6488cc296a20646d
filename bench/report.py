"""Tables for docs/benchmarks.md and the plot, from the JSON lines under bench/results/.

    python -m bench.report [--results FILE ...] [--doc docs/benchmarks.md] [--plot PNG]

Only the parts between this harness's markers (`<!-- bench:NAME:begin -->` ... `end -->`)
are rewritten, so other sections of the document and the prose around the tables stay;
a missing part is appended at the end. For each (card, shape) the latest run is shown.
`tiny` smoke runs are left out.

Records of kind "ab" (lodger alone, several commits one after the other in one device
call, so their figures compare: bench/run_gpu_ab.sh; `ab_call` names the call) get a
table of their own, and count toward the goals beside the full runs (newest first).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from bench.plot import plot
from bench.records import RESULTS_DIR, read_records

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DOC = REPO_ROOT / "docs" / "benchmarks.md"
DEFAULT_PLOT = RESULTS_DIR / "benchmarks.png"
DEFAULT_MODEL_LABEL = "default_model"  # records of the bundled model (its directory's name)
RUN_KEYS = ("kind", "date", "commit", "card", "shape", "command")
# (workload, shape, measure, target): the engine goals of the kernels issue
GOALS = [("nano", "qwen3-0.6b", "output_tok_per_s", 20000.0),
         ("fixed-256-256-1024", "llama3-8b", "req_per_s", 36.0),
         ("batch1", "llama3-8b", "tok_per_s_batch1", 180.0)]
GOAL_CARD = "H100"  # the goals are set for one H100: another card's figure (an H200's) is not one


def latest_runs(records: list[dict], kind: str, by_workload: bool = False) -> list[list[dict]]:
    """The records of the newest run of each (card, shape), in (card, shape) order.

    by_workload: each workload's records come from the newest run that measured it, so a
    shape recorded in several runs (one device call per workload group) shows all of them.
    """
    runs: dict[tuple, list[dict]] = {}
    for record in records:
        if record.get("kind") == kind and record.get("shape") != "tiny":
            runs.setdefault(tuple(record.get(k) for k in RUN_KEYS), []).append(record)
    newest: dict[tuple, tuple] = {}
    for key, run in runs.items():
        for part in {r.get("workload") for r in run} if by_workload else {None}:
            group = (key[3], key[4], part)
            if group not in newest or key[1] > newest[group][1]:
                newest[group] = key
    tables: dict[tuple, list[dict]] = {}
    for (card, shape, part), key in sorted(newest.items(), key=lambda item: item[1][1]):
        tables.setdefault((card, shape), []).extend(
            r for r in runs[key] if part is None or r.get("workload") == part)
    return [tables[k] for k in sorted(tables, key=lambda k: (str(k[0]), str(k[1])))]


def _num(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def _provenance(record: dict, workloads: list[str] | None = None) -> str:
    which = f" ({', '.join(workloads)})" if workloads else ""
    return (f"**{record['card']}**, {record['date'][:10]}, commit `{record['commit']}`{which}:"
            f"\n\n```\n{record['command']}\n```\n")


def offline_table(run: list[dict]) -> str:
    """One shape's table; its records may come from several runs, each named with its
    workloads."""
    by_run: dict[tuple, list[dict]] = {}
    for r in run:
        by_run.setdefault(tuple(r.get(k) for k in RUN_KEYS), []).append(r)
    several = len(by_run) > 1
    provenance = [_provenance(rs[0], sorted({r["workload"] for r in rs}) if several else None)
                  for rs in by_run.values()]
    lines = [f"#### {run[0]['shape']}\n", *provenance,
             "| workload | engine | output tok/s | req/s | ms/token | elapsed s | "
             "lodger ÷ engine |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lodger = {r["workload"]: r for r in run if r["engine"] == "lodger" and "error" not in r}
    for r in sorted(run, key=lambda r: (r["workload"], r["engine"] != "lodger", r["engine"])):
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['engine']} | failed: {r['error'][:80]} "
                         "| | | | |")
            continue
        ratio = lodger.get(r["workload"], {}).get("vs", {}).get(r["engine"])
        is_batch1 = "ms_per_token" in r
        lines.append(
            f"| {r['workload']} | {r['engine']} | {_num(r['output_tok_per_s'])} | "
            f"{_num(r['req_per_s'], 2)} | {_num(r.get('ms_per_token', 0.0), 2) * is_batch1}"
            f" | {_num(r['elapsed_s'], 2)} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines) + "\n"


def goal_value(record: dict, measure: str) -> float:
    if measure == "tok_per_s_batch1":
        return 1000.0 / record["ms_per_token"]
    return record[measure]


def is_candidate(record: dict) -> bool:
    """A tree under test in an A/B call (commit `<hash>-<what>`: a switch or a change not
    committed as such), not a commit as it stands."""
    return "-" in record["commit"]


def goals_table(runs: list[list[dict]], ab: list[dict] = ()) -> str:
    """Each goal against lodger's newest record of it on the goals' card, in a full run or
    an A/B call, of a commit as it stands (a candidate tree may have been rejected); beside
    it the best record of any tree, since cards of one kind differ by a few percent (a
    newest figure from a slow card is not a regression)."""
    lines = ["| goal | target | lodger (newest) | status | best recorded | card | commit, date |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for workload, shape, measure, target in GOALS:
        found = sorted(
            (r for r in [*(r for run in runs for r in run), *ab] if r["engine"] == "lodger"
             and r["workload"] == workload and r["shape"] == shape and "error" not in r
             and GOAL_CARD in r["card"]),
            key=lambda r: r["date"])
        label = f"{workload} on {shape}"
        unit = "req/s" if measure == "req_per_s" else "tok/s"
        if not found:
            lines.append(f"| {label} | {target:,.0f} {unit} | not measured yet | | | | |")
            continue
        values = [goal_value(r, measure) for r in found]
        committed = [i for i, r in enumerate(found) if not is_candidate(r)]
        newest = committed[-1] if committed else len(found) - 1
        r, value = found[newest], values[newest]
        best_value, best = max(zip(values, found, strict=True), key=lambda pair: pair[0])
        # whole percent rounded down: 99.9% must not read as "100% of it"
        status = "met" if value >= target else f"{int(100 * value // target)}% of it"
        best_text = ("this one" if best is r else
                     f"{_num(best_value)} {unit} (`{best['commit']}`, {best['date'][:10]})")
        lines.append(f"| {label} | {target:,.0f} {unit} | {_num(value)} {unit} | {status} | "
                     f"{best_text} | {r['card']} | `{r['commit']}`, {r['date'][:10]}"
                     f"{'; ' + r['note'] if r.get('note') else ''} |")
    return "\n".join(lines) + "\n"


def ab_table(records: list[dict]) -> str:
    """The A/B calls, one table each, runs in the order they ran."""
    calls: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["date"]):
        calls.setdefault(str(r["ab_call"]), []).append(r)
    parts = []
    for call, rows in calls.items():
        first = rows[0]
        shapes = ", ".join(dict.fromkeys(r["shape"] for r in rows))
        lines = [f"#### A/B call {call}: {first['card']}, {first['date'][:10]}, {shapes}\n",
                 "| # | commit | shape | workload | output tok/s | ms/token | elapsed s |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for i, r in enumerate(rows, 1):
            ms = _num(r["ms_per_token"], 2) if "ms_per_token" in r else ""
            lines.append(f"| {i} | `{r['commit']}` | {r['shape']} | {r['workload']} | "
                         f"{_num(r['output_tok_per_s'])} | {ms} | {_num(r['elapsed_s'], 2)} |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _dist(d: dict) -> str:
    return f"{_num(d['p50'])} / {_num(d['p90'])} / {_num(d['p99'])}"


def serving_table(run: list[dict]) -> str:
    first = run[0]
    lines = [f"#### {first['shape']}, workload {first['workload']}, max concurrency "
             f"{first['max_concurrency'] or 'unbounded'}\n", _provenance(first),
             "| rate (req/s) | done | failed | req/s | output tok/s | TTFT ms p50/p90/p99 | "
             "TPOT ms p50/p90/p99 | ITL ms p50/p90/p99 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in run:
        lines.append(f"| {r['request_rate']} | {r['completed']} | {r['failed']} | "
                     f"{_num(r['req_per_s'], 2)} | {_num(r['output_tok_per_s'])} | "
                     f"{_dist(r['ttft_ms'])} | {_dist(r['tpot_ms'])} | {_dist(r['itl_ms'])} |")
    return "\n".join(lines) + "\n"


def default_model_table(runs: list[list[dict]]) -> str:
    lines = ["| card | workload | concurrency | output tok/s | per-stream tok/s (1000 / TPOT) "
             "| TTFT ms p50 | goal (≥ 50 tok/s, one stream) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        for r in run:
            stream = 1000.0 / r["tpot_ms"]["mean"] if r["tpot_ms"]["mean"] else 0.0
            met = "met" if r["max_concurrency"] == 1 and r["output_tok_per_s"] >= 50 else ""
            lines.append(f"| {r['card']} | {r['workload']} | {r['max_concurrency'] or 'all'} | "
                         f"{_num(r['output_tok_per_s'])} | {_num(stream)} | "
                         f"{_num(r['ttft_ms']['p50'])} | {met} |")
    provenance = "\n".join(_provenance(run[0]) for run in runs)
    return "\n".join(lines) + "\n\n" + provenance


def _split_by_workload(run: list[dict]) -> list[list[dict]]:
    parts: dict[str, list[dict]] = {}
    for record in run:
        parts.setdefault(record["workload"], []).append(record)
    return list(parts.values())


def update_section(text: str, name: str, body: str, heading: str) -> str:
    """Replace the marked part `name` of text with body (appended under heading if absent)."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + f"\n\n{heading}\n\n{block}\n"


def render(records: list[dict], doc_text: str, plot_path: Path, doc_path: Path) -> str:
    offline_all = latest_runs(records, "offline", by_workload=True)
    offline = [run for run in offline_all if run[0]["shape"] != DEFAULT_MODEL_LABEL]
    default_offline = [run for run in offline_all if run[0]["shape"] == DEFAULT_MODEL_LABEL]
    serving_all = [part for run in latest_runs(records, "serving", by_workload=True)
                   for part in _split_by_workload(run)]  # one table per workload
    serving = [run for run in serving_all if run[0]["shape"] != DEFAULT_MODEL_LABEL]
    default_runs = [run for run in serving_all if run[0]["shape"] == DEFAULT_MODEL_LABEL]
    if offline or serving:
        plot(offline, serving, plot_path)
    rel_plot = os.path.relpath(plot_path.resolve(), doc_path.resolve().parent)
    offline_body = ("No run recorded yet.\n" if not offline else
                    "\n".join(offline_table(run) for run in offline)
                    + f"\n![throughput and latency]({Path(rel_plot).as_posix()})\n")
    text = update_section(doc_text, "offline", offline_body, "## Offline throughput")
    ab = [r for r in records if r.get("kind") == "ab" and "error" not in r]
    text = update_section(text, "goals", goals_table(offline, ab), "### Goals")
    if ab:
        text = update_section(text, "ab", ab_table(ab), "### A/B runs (lodger alone)")
    serving_body = ("No run recorded yet.\n" if not serving else
                    "\n".join(serving_table(run) for run in serving))
    text = update_section(text, "serving", serving_body, "## Online serving")
    default_body = ("No run recorded yet.\n" if not default_runs else
                    default_model_table(default_runs))
    default_body += "".join("\n" + offline_table(run) for run in default_offline)
    return update_section(text, "default-model", default_body, "## Bundled default model")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, nargs="*",
                        default=sorted(RESULTS_DIR.glob("*.jsonl")))
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args(argv)
    records = read_records(args.results)
    text = args.doc.read_text() if args.doc.exists() else "# Benchmarks\n"
    args.doc.write_text(render(records, text, args.plot, args.doc))
    print(f"wrote {args.doc} from {len(records)} records ({len(args.results)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
