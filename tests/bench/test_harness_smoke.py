"""The harness end to end on CPU (`--tiny`): every engine, the server sweep, the report.

It checks that the harness works and that its numbers are consistent; it asserts nothing
about speed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.records import read_records
from bench.report import render

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(module: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    proc = subprocess.run([sys.executable, "-m", module, "--tiny", "--threads", "1", *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    common = ["--checkpoints", str(root / "checkpoints")]
    _run("bench.throughput", "--out", str(root / "offline.jsonl"), *common)
    _run("bench.serving", "--out", str(root / "serving.jsonl"), *common)
    return root


def test_offline_records_for_every_engine_and_workload(results):
    records = read_records([results / "offline.jsonl"])
    assert {(r["engine"], r["workload"]) for r in records} == {
        (e, w) for e in ("lodger", "hf-static", "hf-cb") for w in ("fixed-32-16-8", "batch1-8-16")}
    for r in records:
        assert "error" not in r
        assert r["shape"] == "tiny" and r["card"].startswith("CPU") and r["commit"]
        assert r["command"].startswith("python -m bench.throughput --tiny")
        assert r["elapsed_s"] > 0
        assert r["output_tok_per_s"] == pytest.approx(r["num_output_tokens"] / r["elapsed_s"],
                                                      rel=1e-3)
    fixed = {r["engine"]: r for r in records if r["workload"] == "fixed-32-16-8"}
    assert all(r["num_output_tokens"] == 8 * 16 for r in fixed.values())
    assert set(fixed["lodger"]["vs"]) == {"hf-static", "hf-cb"}
    lodger_batch1 = next(r for r in records if r["engine"] == "lodger"
                         and r["workload"] == "batch1-8-16")
    assert lodger_batch1["ms_per_token"] > 0 and lodger_batch1["ttft_ms"] > 0


def test_serving_records_for_every_rate(results):
    records = read_records([results / "serving.jsonl"])
    assert [r["request_rate"] for r in records] == ["inf", 20.0]
    for r in records:
        assert (r["completed"], r["failed"]) == (6, 0)
        assert r["num_output_tokens"] == 6 * 8  # EOS ignored: every token of every request
        assert 0 < r["ttft_ms"]["p50"] <= r["ttft_ms"]["p99"] <= r["e2el_ms"]["p99"]
        assert r["tpot_ms"]["p50"] > 0 and r["itl_ms"]["p50"] > 0


def test_report_from_smoke_results(results, tmp_path):
    records = read_records([results / "offline.jsonl", results / "serving.jsonl"])
    for record in records:
        record["shape"] = "qwen3-0.6b"  # render leaves tiny runs out
    doc = tmp_path / "benchmarks.md"
    text = render(records, "# Benchmarks\n", tmp_path / "plot.png", doc)
    assert text.count("| fixed-32-16-8 |") == 3 and "| inf | 6 | 0 |" in text
    assert (tmp_path / "plot.png").is_file()
