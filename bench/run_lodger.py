"""lodger's offline API (`LLM.generate`) on benchmark workloads."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from bench.jit_watch import JitWatch
from bench.records import offline_record
from bench.workloads import Workload, warmup_request


def graph_summary(llm) -> dict:
    """The CUDA graphs' token buckets for steps with prompt tokens, and the start-up timing
    behind those above 512 tokens (engine/prompt_graph_sizes.py); {} without graphs."""
    graphs = llm.engine.runner.graphs
    if graphs is None:
        return {}
    return {"graph_token_buckets": list(graphs.token_buckets),
            "large_bucket_timings": [dataclasses.asdict(t) for t in graphs.large_bucket_timings],
            "graph_memory_mib": round(graphs.memory_bytes / 2**20, 1)}


def run_lodger(model_dir: Path, workloads: list[Workload], options: dict) -> list[dict]:
    """One record per workload; `options` are EngineConfig fields (e.g. enforce_eager)."""
    from lodger.engine import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=str(model_dir), **options)
    load_s = time.perf_counter() - start
    tuning = [result.summary() for result in llm.engine.runner.matmul_tuning]
    warm_prompt, warm_tokens = warmup_request()
    llm.generate([{"prompt_token_ids": warm_prompt}], SamplingParams(max_tokens=warm_tokens),
                 use_tqdm=False)
    records = []
    for workload in workloads:
        params = [SamplingParams(temperature=workload.temperature, ignore_eos=True, max_tokens=m)
                  for m in workload.max_tokens]
        prompts = [{"prompt_token_ids": p} for p in workload.prompts]
        before = llm.engine.stats()
        with JitWatch().watching() as jit:
            start = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - start
        after = llm.engine.stats()
        produced = sum(len(o.outputs[0].token_ids) for o in outputs)
        assert produced == workload.num_output_tokens, (
            f"lodger produced {produced} tokens, the workload asks for "
            f"{workload.num_output_tokens} (EOS is ignored, so they must match)")
        extra = {
            "load_s": round(load_s, 2),
            "options": options,
            "num_steps": after.num_steps - before.num_steps,
            "num_preemptions": after.num_preemptions - before.num_preemptions,
            "num_kv_blocks": after.num_blocks,
            **jit.summary(),  # Triton kernels built inside the timed part (should be none)
            **graph_summary(llm),
        }
        if tuning:
            extra["matmul_tuning"] = tuning
            extra["matmul_tuning_s"] = round(llm.engine.runner.matmul_tuning_s, 2)
        if workload.is_batch1:
            metrics = outputs[0].metrics
            if metrics.first_token_time is not None and metrics.finished_time is not None:
                extra["ttft_ms"] = round(1000 * (metrics.first_token_time
                                                 - metrics.arrival_time), 3)
                decode_s = metrics.finished_time - metrics.first_token_time
                extra["decode_ms_per_token"] = round(
                    1000 * decode_s / max(1, workload.num_output_tokens - 1), 3)
        records.append(offline_record("lodger", workload, elapsed, **extra))
    return records
