"""lodger's decoder against transformers' own model, through the paged KV cache.

Each family's logits must equal HF's (float32, eager attention) within 1e-4 for a batch of
prompts of different lengths run as: chunked prefill (split at non-block-aligned points)
mixed with a whole prompt, then the rest of the chunks mixed with a decode, then decodes,
over a block table of shuffled block ids.
"""

from __future__ import annotations

import itertools
import json
import logging

import pytest
import torch
from checkpoints import build_checkpoint
from hf_reference import hf_model

from lodger.engine.loader import load_model
from lodger.engine.model_config import ModelConfig, RopeConfig
from lodger.kernels.attention_metadata import AttentionMetadata

BLOCK_SIZE = 8
NUM_BLOCKS = 40
ATOL = 1e-4


def hf_logits(model_dir, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(str(model_dir))(torch.tensor([token_ids])).logits[0]


class Sequence:
    """A test sequence: its tokens, its blocks, how many tokens are in the cache."""

    def __init__(self, token_ids: list[int], free_blocks: list[int]):
        self.token_ids = list(token_ids)
        self.num_computed = 0
        self.free_blocks = free_blocks
        self.block_ids: list[int] = []

    def slot(self, position: int) -> int:
        while len(self.block_ids) <= position // BLOCK_SIZE:
            self.block_ids.append(self.free_blocks.pop())
        return self.block_ids[position // BLOCK_SIZE] * BLOCK_SIZE + position % BLOCK_SIZE


def step_inputs(batch: list[tuple[Sequence, int]]):
    """input_ids, positions and AttentionMetadata for (sequence, num_new_tokens) pairs."""
    ids, positions, slots, starts, seq_lens = [], [], [], [0], []
    for seq, num_new in batch:
        new_positions = range(seq.num_computed, seq.num_computed + num_new)
        ids += [seq.token_ids[p] for p in new_positions]
        positions += list(new_positions)
        slots += [seq.slot(p) for p in new_positions]
        starts.append(starts[-1] + num_new)
        seq_lens.append(seq.num_computed + num_new)
    width = max(len(seq.block_ids) for seq, _ in batch)
    tables = torch.zeros((len(batch), width), dtype=torch.int32)
    for row, (seq, _) in enumerate(batch):
        tables[row, : len(seq.block_ids)] = torch.tensor(seq.block_ids)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=tables,
        max_query_len=max(n for _, n in batch),
        max_seq_len=max(seq_lens),
    )
    return torch.tensor(ids), torch.tensor(positions), meta


def run_and_compare(model_dir, model, batch: list[tuple[Sequence, int]], kv_caches) -> None:
    """Run one step; every new token's logits must match HF's at that position."""
    input_ids, positions, meta = step_inputs(batch)
    with torch.inference_mode():
        logits = model.compute_logits(model(input_ids, positions, kv_caches, meta))
    row = 0
    for seq, num_new in batch:
        end = seq.num_computed + num_new
        expected = hf_logits(model_dir, seq.token_ids[:end])[seq.num_computed : end]
        got = logits[row : row + num_new]
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
        row += num_new
        seq.num_computed = end
        if end == len(seq.token_ids):  # caught up: append HF's greedy next token
            seq.token_ids.append(int(expected[-1].argmax()))


def make_kv_caches(config: ModelConfig):
    shape = (NUM_BLOCKS, BLOCK_SIZE, config.num_key_value_heads, config.head_dim)
    return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(config.num_hidden_layers)]


def check_against_hf(model_dir, prompt_lengths=(13, 30, 5), seed=0) -> None:
    config = ModelConfig.from_pretrained(model_dir)
    model = load_model(str(model_dir), config, torch.device("cpu"), torch.float32)
    kv_caches = make_kv_caches(config)
    gen = torch.Generator().manual_seed(seed)
    free_blocks = (torch.randperm(NUM_BLOCKS - 1, generator=gen) + 1).tolist()  # no block 0
    seqs = [
        Sequence(torch.randint(3, config.vocab_size, (n,), generator=gen).tolist(), free_blocks)
        for n in prompt_lengths
    ]
    a, b, c = seqs
    # chunks split at 11 and 19: not multiples of the block size 8
    run_and_compare(model_dir, model, [(a, 11), (b, 19), (c, 5)], kv_caches)
    run_and_compare(model_dir, model, [(c, 1), (a, 2), (b, 11)], kv_caches)
    for _ in range(4):
        run_and_compare(model_dir, model, [(s, 1) for s in seqs], kv_caches)
    assert all(len(s.block_ids) > 1 for s in seqs[:2])
    assert any(x + 1 != y for s in seqs for x, y in itertools.pairwise(s.block_ids)), (
        "block tables should not be contiguous runs"
    )


def test_logits_equal_transformers_through_paged_cache(model_dir):
    check_against_hf(model_dir)


def test_linear_rope_scaling_equals_transformers(tmp_path, tokenizer_dir):
    model_dir = build_checkpoint(
        "llama", tmp_path, tokenizer_dir=tokenizer_dir,
        rope_scaling={"rope_type": "linear", "factor": 4.0}, rope_theta=10000.0,
    )
    assert ModelConfig.from_pretrained(model_dir).rope.rope_type == "linear"
    check_against_hf(model_dir, seed=1)


def test_llama_fixture_uses_llama3_rope(llama_dir):
    rope = ModelConfig.from_pretrained(llama_dir).rope
    assert rope.rope_type == "llama3" and rope.factor == 8.0
    assert rope.original_max_position_embeddings == 64


def test_family_flags(qwen2_dir, qwen3_dir, mistral_dir):
    qwen2 = ModelConfig.from_pretrained(qwen2_dir)
    assert qwen2.qkv_bias and not qwen2.o_bias and not qwen2.qk_norm
    qwen3 = ModelConfig.from_pretrained(qwen3_dir)
    assert qwen3.qk_norm and qwen3.tie_word_embeddings and qwen3.head_dim == 32
    mistral = ModelConfig.from_pretrained(mistral_dir)
    assert mistral.sliding_window is None and mistral.max_position_embeddings == 512


def raw_config(model_dir) -> dict:
    with open(model_dir / "config.json") as f:
        return json.load(f)


def test_transformers4_rope_spelling_reads_the_same(llama_dir):
    raw = raw_config(llama_dir)
    params = raw.pop("rope_parameters")
    raw["rope_theta"] = params.pop("rope_theta")
    raw["rope_scaling"] = {**params, "type": params.pop("rope_type")}
    raw["torch_dtype"] = raw.pop("dtype")
    old = ModelConfig.from_dict(raw)
    assert old == ModelConfig.from_pretrained(llama_dir)
    assert old.dtype == "float32"


def test_unsupported_rope_type_is_named(llama_dir):
    raw = raw_config(llama_dir)
    raw["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(ValueError, match="yarn.*default.*linear.*llama3"):
        ModelConfig.from_dict(raw)


def test_sliding_window_caps_max_model_len(mistral_dir, caplog):
    raw = raw_config(mistral_dir)
    raw["sliding_window"] = 128
    with caplog.at_level(logging.WARNING):
        config = ModelConfig.from_dict(raw)
    assert config.max_position_embeddings == 128 and config.sliding_window == 128
    assert "sliding window" in caplog.text
    raw["sliding_window"] = 4096  # larger than max_position_embeddings: nothing to cap
    assert ModelConfig.from_dict(raw).max_position_embeddings == 512


def test_qwen_sliding_window_ignored_unless_used(qwen2_dir):
    raw = raw_config(qwen2_dir)
    raw["sliding_window"], raw["use_sliding_window"] = 64, False
    assert ModelConfig.from_dict(raw).max_position_embeddings == 512


def test_llama3_inv_freq_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from lodger.engine.models.rotary import inv_freq

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    hf_config = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0,
                            rope_scaling=scaling, max_position_embeddings=131072)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    rope = RopeConfig("llama3", 500000.0, 8.0, 1.0, 4.0, 8192)
    torch.testing.assert_close(inv_freq(rope, 128), expected, rtol=0, atol=0)
