"""The harness's parts: workloads, shapes, the bench tokenizer, metrics, the report."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench.bench_tokenizer import build_vocab
from bench.load import RequestResult, arrival_offsets, check_loopback, run_load
from bench.metrics import summarize
from bench.report import render, update_section
from bench.shapes import SHAPES, build_checkpoint, config_json, tensor_shapes
from bench.workloads import parse_workload


def test_nano_is_nano_vllms_benchmark():
    workload = parse_workload("nano")
    assert workload.num_requests == 256
    assert workload.num_output_tokens == 133_966
    assert workload.temperature == 0.6
    assert all(100 <= len(p) <= 1024 for p in workload.prompts)
    assert all(0 <= t <= 10000 for p in workload.prompts for t in p)
    assert all(100 <= m <= 1024 for m in workload.max_tokens)


def test_fixed_and_batch1_workloads():
    fixed = parse_workload("fixed-256-256-1024")
    assert (fixed.num_requests, fixed.num_input_tokens, fixed.num_output_tokens) == (
        1024, 256 * 1024, 256 * 1024)
    assert fixed.temperature == 1.0 and not fixed.is_batch1
    batch1 = parse_workload("batch1")
    assert batch1.is_batch1 and batch1.max_tokens == [256] and batch1.temperature == 0.0
    assert parse_workload("batch1-8-16").num_output_tokens == 16


@pytest.mark.parametrize("spec", ["fixed-1-2", "fixed-a-2-3", "fixed-0-2-3", "nano2", "batch1-4"])
def test_bad_workload_names_the_allowed_forms(spec):
    with pytest.raises(ValueError, match="fixed-IN-OUT-N"):
        parse_workload(spec)


@pytest.mark.parametrize("name", ["qwen3-0.6b", "llama3-8b"])
def test_shape_tensor_names_match_transformers(name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {k: v for k, v in config_json(SHAPES[name], "bfloat16").items()
              if k not in ("architectures", "torch_dtype", "dtype")}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if SHAPES[name].tie_word_embeddings:
        expected.pop("lm_head.weight")
    assert tensor_shapes(SHAPES[name]) == expected


def test_tiny_checkpoint_loads_in_transformers_and_is_reused(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_checkpoint("tiny", tmp_path, dtype="float32")
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.vocab_size == SHAPES["tiny"].vocab_size
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == SHAPES["tiny"].vocab_size and tokenizer.eos_token_id == 0
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert build_checkpoint("tiny", tmp_path, dtype="float32") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_weights_drawn_in_a_child_process_are_the_same_weights(tmp_path):
    """The GPU path draws weights in a spawned child (so the benchmark's process holds no
    device memory); here on the CPU, against weights drawn in this process."""
    import torch
    from safetensors.torch import load_file

    here = build_checkpoint("tiny", tmp_path / "here", dtype="float32", in_child=False)
    child = build_checkpoint("tiny", tmp_path / "child", dtype="float32", in_child=True)
    ours, theirs = load_file(here / "model.safetensors"), load_file(child / "model.safetensors")
    assert ours.keys() == theirs.keys() and len(ours) > 5
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_bench_tokenizer_decodes_every_id_to_text():
    vocab = build_vocab(5000)
    assert len(vocab) == 5000 and sorted(vocab.values()) == list(range(5000))
    assert all(token for token in vocab)


def test_summarize_follows_benchmark_serving_definitions():
    results = [RequestResult(prompt_len=10, success=True, output_tokens=5, ttft_s=0.1,
                             latency_s=0.5, itl_s=[0.1] * 4),
               RequestResult(prompt_len=10, success=True, output_tokens=3, ttft_s=0.3,
                             latency_s=0.5, itl_s=[0.1, 0.1]),
               RequestResult(prompt_len=10, error="HTTP 500")]
    summary = summarize(results, duration_s=2.0)
    assert (summary["completed"], summary["failed"]) == (2, 1)
    assert summary["num_output_tokens"] == 8 and summary["output_tok_per_s"] == 4.0
    assert summary["tpot_ms"]["mean"] == pytest.approx(100.0)  # (0.5-0.1)/4, (0.5-0.3)/2
    assert summary["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert summary["itl_ms"]["p99"] == pytest.approx(100.0)
    assert summary["errors"] == ["HTTP 500"]


def test_poisson_arrivals_have_the_asked_rate():
    offsets = arrival_offsets(4000, rate=8.0, seed=0)
    assert offsets[0] == 0.0 and all(offsets[1:] >= offsets[:-1])
    assert 4000 / offsets[-1] == pytest.approx(8.0, rel=0.1)
    assert not arrival_offsets(5, float("inf"), seed=0).any()


def test_load_refuses_other_hosts_than_loopback():
    check_loopback("http://127.0.0.1:8000")
    with pytest.raises(ValueError, match="loopback"):
        check_loopback("http://10.0.0.5:8000")
    with pytest.raises(ValueError, match="loopback"):
        asyncio.run(run_load("http://example.com", "m", parse_workload("batch1-8-4"),
                             1.0, None, 1.0))


def test_update_section_replaces_only_its_markers():
    text = "# B\n\n## Kernels\n\nkept\n"
    once = update_section(text, "offline", "table 1", "## Offline")
    assert once.startswith(text.rstrip()) and "table 1" in once
    twice = update_section(once, "offline", "table 2", "## Offline")
    assert "table 1" not in twice and "table 2" in twice and twice.count("## Offline") == 1


def _record(**fields) -> dict:
    base = {"date": "2026-01-01T00:00:00Z", "commit": "abc1234", "card": "NVIDIA H100 X",
            "command": "python -m bench.throughput", "shape": "qwen3-0.6b"}
    return {**base, **fields}


def test_render_shows_latest_run_ratios_goals_and_plot(tmp_path):
    old = _record(kind="offline", engine="lodger", workload="nano", output_tok_per_s=1.0,
                  req_per_s=1.0, elapsed_s=1.0, date="2025-01-01T00:00:00Z")
    lodger = _record(kind="offline", engine="lodger", workload="nano", output_tok_per_s=25000.0,
                     req_per_s=47.8, elapsed_s=5.36, vs={"hf-static": 3.5})
    peer = _record(kind="offline", engine="hf-static", workload="nano",
                   output_tok_per_s=7142.9, req_per_s=13.6, elapsed_s=18.8)
    failed = _record(kind="offline", engine="hf-cb", workload="nano", error="timed out")
    dist = {"mean": 5.0, "p50": 5.0, "p90": 6.0, "p99": 7.0}
    serving = [_record(kind="serving", engine="lodger", workload="fixed-8-8-4", request_rate=r,
                       max_concurrency=None, completed=4, failed=0, req_per_s=2.0,
                       output_tok_per_s=16.0, ttft_ms=dist, tpot_ms=dist, itl_ms=dist,
                       command="python -m bench.serving") for r in (4.0, "inf")]
    default = [_record(kind="serving", engine="lodger", workload="fixed-32-256-4",
                       request_rate="inf", max_concurrency=1, completed=4, failed=0,
                       req_per_s=0.3, output_tok_per_s=80.0, ttft_ms=dist, tpot_ms=dist,
                       itl_ms=dist, shape="default_model", card="CPU x86_64, 2 threads")]
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    text = render([old, lodger, peer, failed, *serving, *default], "# Benchmarks\n",
                  tmp_path / "plot.png", doc)
    assert "| nano | lodger | 25,000.0 |" in text and "| 1.0 |" not in text
    assert "| nano | hf-static | 7,142.9 | 13.60 |  | 18.80 | 3.50x |" in text
    assert "failed: timed out" in text
    assert ("| nano on qwen3-0.6b | 20,000 tok/s | 25,000.0 tok/s | met | this one | "
            "NVIDIA H100 X |") in text
    assert "| inf | 4 | 0 | 2.00 | 16.0 | 5.0 / 6.0 / 7.0 |" in text
    assert "| CPU x86_64, 2 threads | fixed-32-256-4 | 1 | 80.0 | 200.0 | 5.0 | met |" in text
    assert "](../plot.png)" in text and (tmp_path / "plot.png").stat().st_size > 10_000
    json.dumps(text)  # plain text


def test_render_ab_calls_and_goals_from_the_newest_lodger_record(tmp_path):
    full = [_record(kind="offline", engine="lodger", workload="nano", output_tok_per_s=12000.0,
                    req_per_s=23.0, elapsed_s=11.0, vs={"hf-static": 10.0},
                    date="2026-01-01T00:00:00Z"),
            _record(kind="offline", engine="hf-static", workload="nano",
                    output_tok_per_s=1200.0, req_per_s=2.3, elapsed_s=110.0,
                    date="2026-01-01T00:00:00Z")]
    ab = [_record(kind="ab", ab_call=3, engine="lodger", workload="nano", commit=commit,
                  output_tok_per_s=value, req_per_s=1.0, elapsed_s=133966 / value, date=date)
          for commit, value, date in (("aaa", 13000.0, "2026-01-02T00:00:00Z"),
                                      ("bbb", 18000.0, "2026-01-02T00:01:00Z"))]
    # newer, but on an H200: the goals are an H100's, so it is listed but not the goal figure
    ab.append(_record(kind="ab", ab_call=4, engine="lodger", workload="nano", commit="ccc",
                      output_tok_per_s=23000.0, req_per_s=1.0, elapsed_s=5.8,
                      date="2026-01-03T00:00:00Z", card="NVIDIA H200"))
    doc = tmp_path / "benchmarks.md"
    text = render([*full, *ab], "# Benchmarks\n", tmp_path / "plot.png", doc)
    assert "| nano | lodger | 12,000.0 |" in text and "| nano | hf-static | 1,200.0 |" in text
    assert "#### A/B call 3: NVIDIA H100 X, 2026-01-02, qwen3-0.6b" in text
    assert "| 1 | `aaa` | qwen3-0.6b | nano | 13,000.0 |  |" in text
    assert "| 2 | `bbb` | qwen3-0.6b | nano | 18,000.0" in text
    goal = ("| nano on qwen3-0.6b | 20,000 tok/s | 18,000.0 tok/s | 90% of it | this one | "
            "NVIDIA H100 X |")
    assert f"{goal} `bbb`" in text
    assert "#### A/B call 4: NVIDIA H200, 2026-01-03" in text and "| 1 | `ccc` |" in text


def test_goal_row_carries_a_record_note(tmp_path):
    """A record's note (e.g. which option was on) is shown beside its commit in the goals."""
    ab = [_record(kind="ab", ab_call=1, engine="lodger", workload="nano", commit="ccc",
                  output_tok_per_s=15000.0, req_per_s=1.0, elapsed_s=9.0,
                  date="2026-01-03T00:00:00Z", note="an option on")]
    text = render(ab, "# Benchmarks\n", tmp_path / "plot.png", tmp_path / "benchmarks.md")
    assert "| NVIDIA H100 X | `ccc`, 2026-01-03; an option on |" in text


def test_profile_lodger_times_the_step_phases(tmp_path):
    from bench.profile_lodger import main

    out = tmp_path / "profile.json"
    assert main(["--shape", "tiny", "--workload", "fixed-16-8-8", "--window", "3",
                 "--prefill-window", "3",
                 "--checkpoints", str(tmp_path), "--out", str(out)]) == 0
    profile = json.loads(out.read_text())
    assert set(profile["phase_ms_per_step"]) == {"schedule", "launch", "process", "update"}
    assert profile["num_steps"] >= 8 and profile["decode_window"]["steps"] == 3
    assert profile["decode_window"]["num_running"] == 8
    assert profile["tail_window"]["steps"] >= 1
    kinds = profile["step_kinds"]
    assert all(kind.startswith("decode") for kind in kinds)  # the prompts were in the window
    num_launched = sum(kind["steps"] for kind in kinds.values())
    windows = [profile[name]["steps"] for name in ("prefill_window", "tail_window")]
    assert windows[0] == 3 and num_launched + 3 + sum(windows) <= profile["num_steps"]


def test_prefill_latency_times_each_request_and_profiles_one(tmp_path, capsys):
    from bench.prefill_latency import main

    out = tmp_path / "prefill.json"
    assert main(["--shape", "tiny", "--lengths", "5,12", "--repeats", "2", "--cprofile", "3",
                 "--checkpoints", str(tmp_path), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [r["prompt_tokens"] for r in record["results"]] == [5, 12]
    for result in record["results"]:
        assert len(result["wall_ms"]) == 2 and min(result["wall_ms"]) > 0
        assert result["profiled"]["steps"] >= 1  # the profiled request ran to its end
    assert "Ordered by: internal time" in capsys.readouterr().out  # the cProfile table


def test_hf_cb_cache_plan_fits_beside_llama3_8b():
    """The H100 figures of the failed run: 16 GB of weights, ~62 GiB free after loading."""
    from types import SimpleNamespace

    from bench.run_hf import CB_MEMORY_SHARE, cb_cache_plan

    config = SimpleNamespace(**config_json(SHAPES["llama3-8b"], "bfloat16"))
    free = int(62 * 2**30)
    fixed = cb_cache_plan(config, parse_workload("fixed-256-256-1024"), 256, free)
    assert fixed["blocks_fit"] < fixed["blocks_needed"] == 1024 * 2
    assert fixed["num_blocks"] == fixed["blocks_fit"] and fixed["max_batch_tokens"] == 8192
    # the cache itself, one layer's K/V repeated to the query heads and the mask stay inside
    tokens = fixed["num_blocks"] * 256
    repeated = tokens * 2 * 32 * 128 * 2
    mask = 8192 * (tokens + 8192) * 2
    assert fixed["kv_gib"] * 2**30 + repeated + mask < CB_MEMORY_SHARE * free
    assert 30 < fixed["kv_gib"] < 45
    batch1 = cb_cache_plan(config, parse_workload("batch1"), 256, free)
    assert (batch1["num_blocks"], batch1["max_batch_tokens"]) == (2, 512)
    with pytest.raises(MemoryError):
        cb_cache_plan(config, parse_workload("batch1"), 256, 2**30)


def test_hf_cb_block_field_is_the_installed_transformers_one():
    import dataclasses

    from transformers import ContinuousBatchingConfig

    from bench.run_hf import cb_block_field

    field = cb_block_field()
    assert field in {"page_size", "block_size"}
    assert getattr(ContinuousBatchingConfig(**{field: 32}), field) == 32
    assert field in {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}


def test_report_shows_each_workload_from_its_newest_run():
    from bench.report import latest_runs, offline_table

    def rec(date, workload, engine="lodger"):
        return _record(kind="offline", engine=engine, workload=workload, date=date,
                       command=f"run {date}", output_tok_per_s=1.0, req_per_s=1.0,
                       elapsed_s=1.0)

    records = [rec("2026-01-01", "fixed"), rec("2026-01-01", "batch1"),
               rec("2026-01-02", "fixed"), rec("2026-01-02", "fixed", "hf-cb"),
               rec("2026-01-03", "batch1")]
    [table] = latest_runs(records, "offline", by_workload=True)
    assert sorted((r["workload"], r["engine"], r["date"]) for r in table) == [
        ("batch1", "lodger", "2026-01-03"), ("fixed", "hf-cb", "2026-01-02"),
        ("fixed", "lodger", "2026-01-02")]
    [whole] = latest_runs(records, "offline")
    assert [r["date"] for r in whole] == ["2026-01-03"]
    table_text = offline_table(table)
    assert "commit `abc1234` (batch1):" in table_text and "(fixed):" in table_text


def test_throughput_budget_skips_engines_once_spent(tmp_path, monkeypatch):
    import bench.throughput as throughput

    calls = []

    def fake_worker(engine, model_dir, workloads, options, threads, timeout_s, command):
        calls.append((engine, timeout_s))
        return [{"kind": "offline", "engine": engine, "workload": w, "error": "fake"}
                for w in workloads.split(",")]

    monkeypatch.setattr(throughput, "run_worker", fake_worker)
    monkeypatch.setattr(throughput, "resolve_model", lambda args: (tmp_path, "tiny"))
    out = tmp_path / "out.jsonl"
    assert throughput.main(["--tiny", "--out", str(out), "--timeout", "30",
                            "--budget", "0.5"]) == 1
    assert calls == []
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and all("budget was spent" in r["error"] for r in records)
    calls.clear()
    throughput.main(["--tiny", "--out", str(out), "--timeout", "30", "--budget", "100"])
    assert [engine for engine, _ in calls] == ["lodger", "hf-static", "hf-cb"]
    assert all(0 < limit <= 30 for _, limit in calls)


def test_jit_watch_counts_builds_through_tritons_hooks():
    from bench.jit_watch import JitWatch, _hook_knobs

    runtime = _hook_knobs()
    if runtime is None:
        assert JitWatch().summary() == {"jit_builds": None}
        pytest.skip("this Triton has no JIT hooks (triton.knobs.runtime)")
    saved = runtime.jit_cache_hook, runtime.jit_post_compile_hook
    with JitWatch().watching() as jit:
        # what Triton's JIT calls around a build, by keyword (triton/runtime/jit.py)
        assert runtime.jit_cache_hook(key=("a", 16), repr="kernel_a[...](n: i32)") is False
        assert runtime.jit_cache_hook(key=("b", 1), repr="kernel_b[...](n: constexpr)") is False
        runtime.jit_post_compile_hook(key=("b", 1), repr="kernel_b[...](n: constexpr)")
        runtime.jit_post_compile_hook(key=("a", 16), repr="kernel_a[...](n: i32)")
    assert (runtime.jit_cache_hook, runtime.jit_post_compile_hook) == saved  # restored
    summary = jit.summary()
    assert summary["jit_builds"] == 2 and summary["jit_build_s"] >= 0
    assert [b.kernel for b in jit.builds] == ["kernel_b[...](n: constexpr)",
                                              "kernel_a[...](n: i32)"]


def test_each_serving_workload_keeps_its_table_and_goals_round_down(tmp_path):
    dist = {"mean": 5.0, "p50": 5.0, "p90": 6.0, "p99": 7.0}
    serving = [_record(kind="serving", engine="lodger", workload=workload, request_rate=4.0,
                       max_concurrency=None, completed=4, failed=0, req_per_s=2.0,
                       output_tok_per_s=tok_s, ttft_ms=dist, tpot_ms=dist, itl_ms=dist,
                       command=f"python -m bench.serving --workload {workload}", date=date)
               for workload, tok_s, date in (("fixed-1024-128-200", 11.0, "2026-01-01T00:00:00Z"),
                                             ("fixed-128-128-400", 22.0, "2026-01-02T00:00:00Z"))]
    batch1 = _record(kind="ab", ab_call=1, engine="lodger", workload="batch1", shape="llama3-8b",
                     output_tok_per_s=179.9, ms_per_token=1000 / 179.9, req_per_s=1.0,
                     elapsed_s=1.4)
    earlier = {**batch1, "commit": "older", "date": "2025-12-31T00:00:00Z",
               "ms_per_token": 1000 / 181.0}
    text = render([*serving, earlier, batch1], "# Benchmarks\n", tmp_path / "plot.png",
                  tmp_path / "benchmarks.md")
    assert "#### qwen3-0.6b, workload fixed-1024-128-200" in text and "| 11.0 |" in text
    assert "#### qwen3-0.6b, workload fixed-128-128-400" in text and "| 22.0 |" in text
    # the newest record sets the status; the best one stands beside it
    assert "| 179.9 tok/s | 99% of it | 181.0 tok/s (`older`, 2025-12-31) |" in text


def test_goal_takes_the_newest_committed_tree_and_the_best_of_any():
    from bench.report import goals_table

    def nano(date, commit, tok_s):
        return _record(kind="ab", engine="lodger", workload="nano", date=date, commit=commit,
                       output_tok_per_s=tok_s, req_per_s=1.0, elapsed_s=1.0, ab_call=1)

    ab = [nano("2026-01-01", "abc1234-fast", 21000.0), nano("2026-01-02", "abc1234", 19000.0),
          nano("2026-01-03", "abc1234-slow", 18000.0)]
    row = next(line for line in goals_table([], ab).splitlines() if line.startswith("| nano"))
    # newest: the committed tree, not the later rejected candidate; best: any tree
    assert "| 19,000.0 tok/s | 95% of it |" in row and "21,000.0 tok/s (`abc1234-fast`" in row
    only_candidates = goals_table([], ab[:1])
    assert "| 21,000.0 tok/s | met | this one |" in only_candidates
