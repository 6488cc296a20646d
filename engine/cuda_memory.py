"""Size the KV cache on CUDA by profiling one worst-case step (CUDA only).

KV bytes = gpu_memory_utilization * card memory - memory in use after loading (weights,
CUDA context, other processes) - peak activations of a max_num_batched_tokens forward
plus logits and sampling for max_num_seqs rows.
"""

from __future__ import annotations

import logging

import torch

from lodger.engine.request import Request
from lodger.engine.sampler import SamplingMetadata
from lodger.engine.sampling_params import SamplingParams
from lodger.engine.step_inputs import cdiv
from lodger.kernels.attention_metadata import AttentionMetadata

logger = logging.getLogger(__name__)


def profile_cuda_kv_blocks(runner) -> int:
    """The number of KV blocks that fit (block 0, the null block, included)."""
    config, device = runner.config, runner.device
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        _worst_case_step(runner)
    torch.cuda.synchronize(device)
    peak_activations = torch.cuda.max_memory_allocated(device) - allocated
    torch.cuda.empty_cache()
    in_use = total - free
    kv_bytes = config.gpu_memory_utilization * total - in_use - peak_activations
    num_blocks = int(kv_bytes // runner.bytes_per_block)
    needed = cdiv(runner.max_model_len, runner.block_size) + 1
    logger.info(
        "CUDA memory: %.2f GiB card, %.2f GiB in use after loading, %.2f GiB peak "
        "activations, %.2f GiB for the KV cache", total / 2**30, in_use / 2**30,
        peak_activations / 2**30, max(kv_bytes, 0) / 2**30,
    )
    if num_blocks < needed:
        raise ValueError(
            f"the KV cache fits {max(num_blocks, 0)} blocks but one max_model_len "
            f"({runner.max_model_len}) sequence needs {needed}: raise gpu_memory_utilization "
            f"({config.gpu_memory_utilization}), or lower max_model_len or "
            f"max_num_batched_tokens ({config.max_num_batched_tokens})"
        )
    return num_blocks


def _worst_case_step(runner) -> None:
    """A forward over max_num_batched_tokens tokens (sequences of at most max_model_len),
    then logits and sampling with every filter and logprobs for max_num_seqs rows."""
    config, mc, device = runner.config, runner.model_config, runner.device
    num_tokens = config.max_num_batched_tokens
    seq_lens = [min(runner.max_model_len, num_tokens - start)
                for start in range(0, num_tokens, runner.max_model_len)]
    block_size = runner.block_size
    blocks_per_seq = [cdiv(n, block_size) for n in seq_lens]
    # One small cache shared by all layers: only the activations are being measured.
    num_blocks = sum(blocks_per_seq) + 1
    cache_shape = (num_blocks, block_size, mc.num_key_value_heads, mc.head_dim)
    k_cache = torch.zeros(cache_shape, dtype=runner.dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    width = max(blocks_per_seq)
    tables = torch.zeros((len(seq_lens), width), dtype=torch.int32)
    first = 1
    positions, slots = [], []
    for i, (n, b) in enumerate(zip(seq_lens, blocks_per_seq, strict=True)):
        tables[i, :b] = torch.arange(first, first + b)
        positions.append(torch.arange(n))
        slots.append(torch.arange(first * block_size, first * block_size + n))
        first += b
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    meta = AttentionMetadata(
        slot_mapping=torch.cat(slots).to(device),
        query_start_loc=torch.nn.functional.pad(lens.cumsum(0), (1, 0)).int().to(device),
        seq_lens=lens.to(device),
        block_tables=tables.to(device),
        max_query_len=max(seq_lens),
        max_seq_len=max(seq_lens),
    )
    input_ids = torch.zeros(num_tokens, dtype=torch.int64, device=device)
    hidden = runner.model(
        input_ids, torch.cat(positions).to(device), [(k_cache, v_cache)] * mc.num_hidden_layers,
        meta,
    )
    num_rows = min(config.max_num_seqs, num_tokens)
    logits = runner.model.compute_logits(hidden[:num_rows])
    params = SamplingParams(
        temperature=0.7, top_p=0.9, top_k=50, min_p=0.05, repetition_penalty=1.1,
        presence_penalty=0.5, logprobs=20,
    )
    requests = [
        Request(f"profile-{i}", [0], params, eos_token_id=None, arrival_time=0.0)
        for i in range(num_rows)
    ]
    runner.sampler(logits, SamplingMetadata.from_requests(requests, device, {}))
