"""The Hugging Face transformers peers on benchmark workloads.

- `hf-static`: `generate` with a static KV cache, its fastest plain path. All batches have
  one shape (prompts left-padded to the workload's longest, every row generating the
  workload's largest max_tokens, the last batch filled up with repeated prompts), so the
  decode step that transformers compiles for static caches on CUDA compiles once. Only the
  tokens each request asked for count as output; the padding is the path's real cost.
- `hf-cb`: transformers' continuous batching (`init_continuous_batching`, `add_request(...,
  max_new_tokens=...)`), with CUDA graphs on where there is CUDA.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from bench.records import offline_record
from bench.workloads import Workload, warmup_request

MAX_STATIC_BATCH = 256
STATIC_MEMORY_SHARE = 0.6  # of the free GPU memory, for static caches and prefill activations


def load_model(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="sdpa")
    # EOS ignored: generate fills unset fields from the checkpoint's generation_config.json
    model.generation_config.eos_token_id = None
    return model.to("cuda" if cuda else "cpu").eval()


def _generation_config(workload: Workload, max_new_tokens: int, **fields):
    from transformers import GenerationConfig

    sampling = ({"do_sample": True, "temperature": workload.temperature, "top_k": 0,
                 "top_p": 1.0} if workload.temperature > 0 else {"do_sample": False})
    return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0,
                            **sampling, **fields)


def static_batch_size(model, workload: Workload) -> int:
    """Rows per batch: what the GPU memory holds (static cache + prefill), balanced."""
    import torch

    limit = min(workload.num_requests, MAX_STATIC_BATCH)
    if torch.cuda.is_available():
        config = model.config
        cache_len = max(len(p) for p in workload.prompts) + max(workload.max_tokens)
        prompt_len = max(len(p) for p in workload.prompts)
        head_dim = (getattr(config, "head_dim", None)
                    or config.hidden_size // config.num_attention_heads)
        kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2
        # per row: its cache, attention scores of a masked prefill, MLP activations
        row_bytes = (kv_bytes * cache_len
                     + 2 * config.num_attention_heads * prompt_len * cache_len
                     + 2 * prompt_len * (4 * config.hidden_size + 3 * config.intermediate_size))
        free_bytes = torch.cuda.mem_get_info()[0]
        limit = max(1, min(limit, int(STATIC_MEMORY_SHARE * free_bytes // row_bytes)))
    else:
        limit = min(limit, 8)
    num_batches = math.ceil(workload.num_requests / limit)
    return math.ceil(workload.num_requests / num_batches)


def _static_batches(workload: Workload, batch_size: int):
    """(input_ids, attention_mask) tensors of one shape, left-padded with id 0."""
    import torch

    width = max(len(p) for p in workload.prompts)
    prompts = list(workload.prompts)
    while len(prompts) % batch_size:
        prompts.append(prompts[len(prompts) % workload.num_requests])
    for start in range(0, len(prompts), batch_size):
        rows = prompts[start:start + batch_size]
        ids = torch.zeros((batch_size, width), dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        yield ids, mask


def run_hf_static(model, workload: Workload) -> dict:
    import torch

    batch_size = static_batch_size(model, workload)
    max_new = max(workload.max_tokens)
    cache_len = max(len(p) for p in workload.prompts) + max_new
    config = _generation_config(workload, max_new, cache_implementation="static",
                                max_cache_len=cache_len)
    warm = _generation_config(workload, warmup_request()[1], cache_implementation="static",
                              max_cache_len=cache_len)
    batches = list(_static_batches(workload, batch_size))
    with torch.inference_mode():
        ids, mask = batches[0]  # compiles (on CUDA) for this shape before the clock starts
        model.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                       generation_config=warm)
        _sync()
        start = time.perf_counter()
        for ids, mask in batches:
            out = model.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                                 generation_config=config)
            assert out.shape[1] == ids.shape[1] + max_new, "static generate stopped early"
        _sync()
        elapsed = time.perf_counter() - start
    num_rows = batch_size * len(batches)
    return offline_record("hf-static", workload, elapsed, batch_size=batch_size,
                          num_batches=len(batches),
                          num_generated_tokens=num_rows * max_new,
                          dynamo_graphs=_dynamo_graphs())


def run_hf_cb(model, workload: Workload) -> dict:
    import torch
    from transformers import ContinuousBatchingConfig

    cuda = torch.cuda.is_available()
    cb_config = ContinuousBatchingConfig(use_cuda_graph=cuda)
    if not cuda:  # sized from free GPU memory on CUDA; on CPU, just what the workload needs
        longest = max(len(p) for p in workload.prompts) + max(workload.max_tokens)
        cb_config.block_size = 32
        cb_config.num_blocks = workload.num_requests * math.ceil(longest / cb_config.block_size)
        cb_config.max_batch_tokens = 2048
    manager = model.init_continuous_batching(
        generation_config=_generation_config(workload, max(workload.max_tokens)),
        continuous_batching_config=cb_config, workload_hints=_workload_hints(workload))
    if cuda:
        manager.warmup()  # captures the CUDA graphs before the clock starts
    manager.start()
    try:
        warm_prompt, warm_tokens = warmup_request()
        _collect(manager, [manager.add_request(warm_prompt, max_new_tokens=warm_tokens,
                                               eos_token_id=-1)])
        start = time.perf_counter()
        request_ids = [manager.add_request(p, max_new_tokens=m, eos_token_id=-1)
                       for p, m in zip(workload.prompts, workload.max_tokens, strict=True)]
        results = _collect(manager, request_ids)
        elapsed = time.perf_counter() - start
    finally:
        manager.stop(block=True, timeout=30)
        manager.destroy()
    produced = sum(len(r.generated_tokens) for r in results.values())
    assert produced == workload.num_output_tokens, (
        f"hf-cb produced {produced} tokens, the workload asks for {workload.num_output_tokens}")
    return offline_record("hf-cb", workload, elapsed, cuda_graphs=cuda)


def _collect(manager, request_ids: list[str], timeout_s: float = 1800.0) -> dict:
    """Wait for every request of request_ids to finish; returns their outputs by id."""
    pending, results = set(request_ids), {}
    deadline = time.monotonic() + timeout_s
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} hf-cb requests never finished"
        result = manager.get_result(timeout=1)
        if result is None:
            assert manager.is_running(), "the continuous batching thread died"
            continue
        if result.request_id in pending and result.is_finished():
            assert result.error is None, f"hf-cb request failed: {result.error}"
            pending.discard(result.request_id)
            results[result.request_id] = result
    return results


def _workload_hints(workload: Workload):
    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints
    except ImportError:  # older transformers size the cache without hints
        return None
    return WorkloadHints(max_prompt_length=max(len(p) for p in workload.prompts),
                         max_generated_length=max(workload.max_tokens),
                         num_requests=workload.num_requests)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _dynamo_graphs() -> int:
    """Graphs torch.compile produced so far (0: nothing was compiled)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["stats"]["unique_graphs"])


def run_hf(engine: str, model_dir: Path, workloads: list[Workload]) -> list[dict]:
    start = time.perf_counter()
    model = load_model(model_dir)
    load_s = round(time.perf_counter() - start, 2)
    run = {"hf-static": run_hf_static, "hf-cb": run_hf_cb}[engine]
    return [{**run(model, w), "load_s": load_s} for w in workloads]
