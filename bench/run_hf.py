"""The Hugging Face transformers peers on benchmark workloads.

- `hf-static`: `generate` with a static KV cache, its fastest plain path. All batches have
  one shape (prompts left-padded to the workload's longest, every row generating the
  workload's largest max_tokens, the last batch filled up with repeated prompts), so the
  decode step that transformers compiles for static caches on CUDA compiles once. Only the
  tokens each request asked for count as output; the padding is the path's real cost.
- `hf-cb`: transformers' continuous batching (`init_continuous_batching`, `add_request(...,
  max_new_tokens=...)`), with CUDA graphs on where there is CUDA. Its KV cache is sized here
  (`cb_cache_plan`), not by transformers: see there why.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from pathlib import Path

from bench.records import offline_record
from bench.workloads import Workload, warmup_request

MAX_STATIC_BATCH = 256
STATIC_MEMORY_SHARE = 0.6  # of the free GPU memory, for static caches and prefill activations
CB_MEMORY_SHARE = 0.85  # of the free GPU memory, for hf-cb's cache and what scales with it
CB_MAX_BATCH_TOKENS = 8192  # transformers' own default (5.17 and 5.24) where memory allows
CB_CPU_BLOCK_TOKENS = 32  # CPU runs: a small cache of just what the workload needs
CB_CPU_MAX_BATCH_TOKENS = 2048


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
        # On CUDA generate compiles its decode step (torch.compile, reduce-overhead: CUDA
        # graphs) for this batch shape here, before the clock starts: HF's fastest plain path,
        # kept. Every batch of the workload has this shape, so that is the one compile, but a
        # workload of another shape in the same process compiles again (dynamo recompiles per
        # shape). That is what put llama3-8b's batch1 past 170 s after fixed-256-256-1024 in
        # one process (load 12 s + a compile for batch 256 + 73 s timed + a compile for
        # batch 1); bench/run_gpu.sh now runs the two in separate processes. warmup_s says
        # what the compile cost.
        warm_start = time.perf_counter()
        ids, mask = batches[0]
        model.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                       generation_config=warm)
        _sync()
        warmup_s = round(time.perf_counter() - warm_start, 2)
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
                          dynamo_graphs=_dynamo_graphs(), warmup_s=warmup_s)


def cb_block_field() -> str:
    """The ContinuousBatchingConfig field for tokens per cache block: `block_size` in 5.17
    (the device image's), `page_size` in 5.24 (which still has `block_size`, deprecated, read
    only when passed to the constructor)."""
    from transformers import ContinuousBatchingConfig

    names = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    return "page_size" if "page_size" in names else "block_size"


def cb_blocks_needed(workload: Workload, block_tokens: int) -> int:
    """Blocks for every request of the workload resident at once (prompt + all its tokens)."""
    return sum(math.ceil((len(p) + m) / block_tokens)
               for p, m in zip(workload.prompts, workload.max_tokens, strict=True))


def cb_cache_plan(config, workload: Workload, block_tokens: int, free_bytes: int,
                  dtype_bytes: int = 2) -> dict:
    """hf-cb's cache size on CUDA: (num_blocks, max_batch_tokens) and how they were found.

    transformers sizes the cache from free memory itself, but 5.17 (the device image's)
    under-counts the attention peak of its `paged|sdpa` path: it reserves one layer's K and V
    read back from the cache at the kv-head count, while `sdpa_attention_paged_forward`
    also repeats them to the query-head count (`repeat_kv`, 4x for llama3-8b). On an H100 with
    llama3-8b its default cache left too little beside the 16 GB of weights: the varlen
    warm-up at the largest shape failed (CUDA OOM, 5.74 GiB), then the run died in `repeat_kv`
    (OOM, 1.06 GiB) with 76 GiB allocated (5.24 counts the repeat; the device runs 5.17). On
    qwen3-0.6b the same warm-up failed too (OOM), and the run went on capturing CUDA graphs
    inside the timed part.

    Here every byte that scales with the cache is counted per cache token: the K/V of every
    layer, one layer's K/V read back and repeated to the query heads, the [M, N + M]
    attention mask (twice: the static one and the slice SDPA may copy), the read index; the
    rest (the mask's M x M part, M tokens of activations, the logits rows) is reserved up
    front; all of it within CB_MEMORY_SHARE of the free memory after the model is loaded.
    The cache holds at most what the workload needs with every request resident at once, so
    a small workload (batch1) does not warm up for half a million tokens it never reads.
    """
    layers = config.num_hidden_layers
    q_heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or q_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // q_heads
    m = CB_MAX_BATCH_TOKENS
    per_token = (2 * layers * kv_heads * head_dim * dtype_bytes        # the cache itself
                 + 2 * (kv_heads + q_heads) * head_dim * dtype_bytes   # read back + repeat_kv
                 + 2 * m * dtype_bytes                                 # mask columns, twice
                 + 8)                                                  # read index, int64
    logit_rows = min(workload.num_requests, 1024)  # transformers' max_requests_per_batch
    fixed = (2 * m * m * dtype_bytes
             + m * dtype_bytes * (4 * config.hidden_size + 3 * config.intermediate_size)
             + 2 * logit_rows * (config.hidden_size * dtype_bytes + config.vocab_size * 4))
    budget = int(CB_MEMORY_SHARE * free_bytes) - fixed
    fits = max(0, budget // per_token) // block_tokens
    needed = cb_blocks_needed(workload, block_tokens)
    if fits < 1:
        raise MemoryError(f"hf-cb: {free_bytes / 2**30:.1f} GiB free holds no cache block "
                          f"beside {fixed / 2**30:.1f} GiB of fixed reservations")
    num_blocks = min(needed, fits)
    return {"num_blocks": num_blocks, "block_tokens": block_tokens,
            "max_batch_tokens": min(m, num_blocks * block_tokens),
            "blocks_needed": needed, "blocks_fit": fits, "free_gib": free_bytes / 2**30,
            "kv_gib": num_blocks * block_tokens * 2 * layers * kv_heads * head_dim
            * dtype_bytes / 2**30}


def _cb_config(model, workload: Workload):
    """The ContinuousBatchingConfig of hf-cb, and the cache plan it carries (logged)."""
    import torch
    from transformers import ContinuousBatchingConfig

    field = cb_block_field()
    if not torch.cuda.is_available():  # CPU: no free-memory figure; just what the workload needs
        block_tokens = CB_CPU_BLOCK_TOKENS
        num_blocks = cb_blocks_needed(workload, block_tokens)
        plan = {"num_blocks": num_blocks, "block_tokens": block_tokens,
                "max_batch_tokens": min(CB_CPU_MAX_BATCH_TOKENS, num_blocks * block_tokens)}
        cb_config = ContinuousBatchingConfig(use_cuda_graph=False, num_blocks=num_blocks,
                                             max_batch_tokens=plan["max_batch_tokens"],
                                             **{field: block_tokens})
        print(f"hf-cb cache for {workload.name}: {num_blocks} blocks x {block_tokens} tokens "
              f"(what the workload needs), max_batch_tokens {plan['max_batch_tokens']}",
              flush=True)
        return cb_config, plan
    gc.collect()
    torch.cuda.empty_cache()  # what an earlier workload's manager cached goes back first
    free_bytes = torch.cuda.mem_get_info()[0]
    block_tokens = getattr(ContinuousBatchingConfig(), field)  # transformers' default (256)
    plan = cb_cache_plan(model.config, workload, block_tokens, free_bytes,
                         dtype_bytes=model.dtype.itemsize)
    # max_memory_percent is only what transformers checks the footprint against here (both
    # sizes are given); its own count of that footprint is below this plan's
    cb_config = ContinuousBatchingConfig(use_cuda_graph=True, num_blocks=plan["num_blocks"],
                                         max_batch_tokens=plan["max_batch_tokens"],
                                         max_memory_percent=CB_MEMORY_SHARE)
    print(f"hf-cb cache for {workload.name}: {plan['num_blocks']} blocks x "
          f"{block_tokens} tokens ({plan['kv_gib']:.1f} GiB of K/V; the workload needs "
          f"{plan['blocks_needed']}, {CB_MEMORY_SHARE} of {plan['free_gib']:.1f} GiB free holds "
          f"{plan['blocks_fit']}), max_batch_tokens {plan['max_batch_tokens']}", flush=True)
    return cb_config, plan


def run_hf_cb(model, workload: Workload) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    cb_config, plan = _cb_config(model, workload)
    manager = model.init_continuous_batching(
        generation_config=_generation_config(workload, max(workload.max_tokens)),
        continuous_batching_config=cb_config, workload_hints=_workload_hints(workload))
    warm_start = time.perf_counter()
    if cuda:
        manager.warmup()  # captures the CUDA graphs before the clock starts
    manager.start()
    try:
        warm_prompt, warm_tokens = warmup_request()
        _collect(manager, [manager.add_request(warm_prompt, max_new_tokens=warm_tokens,
                                               eos_token_id=-1)])
        warmup_s = round(time.perf_counter() - warm_start, 2)
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
    return offline_record("hf-cb", workload, elapsed, cuda_graphs=cuda,
                          cb_num_blocks=plan["num_blocks"], cb_block_tokens=plan["block_tokens"],
                          cb_max_batch_tokens=plan["max_batch_tokens"], warmup_s=warmup_s)


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
