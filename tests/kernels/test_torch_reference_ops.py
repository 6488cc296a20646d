"""The plain-torch references against HF transformers' Llama modules and dense attention."""

import subprocess
import sys

import pytest
import torch
from kernel_batches import dense_causal_attention, make_batch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from lodger.kernels import ops, reference


def test_rms_norm_matches_hf():
    x, weight = torch.randn(7, 48), torch.randn(48)
    hf = LlamaRMSNorm(48, eps=1e-5)
    hf.weight.data.copy_(weight)
    assert torch.equal(ops.rms_norm(x, weight, 1e-5), hf(x))
    x16, w16 = x.half(), weight.half()
    hf.half()
    assert torch.equal(ops.rms_norm(x16, w16, 1e-5), hf(x16))


def test_fused_add_rms_norm_returns_sum_and_keeps_inputs():
    x, residual, weight = torch.randn(5, 32), torch.randn(5, 32), torch.randn(32)
    x_before, res_before = x.clone(), residual.clone()
    normed, summed = ops.fused_add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(summed, x_before + res_before)
    assert torch.equal(normed, ops.rms_norm(x_before + res_before, weight, 1e-6))
    assert torch.equal(x, x_before) and torch.equal(residual, res_before)


@pytest.mark.parametrize("rope_scaling", [None, "llama3"])
def test_apply_rotary_matches_hf(rope_scaling):
    kwargs = {}
    if rope_scaling:
        kwargs["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    config = LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        **kwargs,
    )
    rope = LlamaRotaryEmbedding(config)
    num_tokens = 9
    positions = torch.randint(0, 512, (num_tokens,))
    q, k = torch.randn(1, 4, num_tokens, 32), torch.randn(1, 2, num_tokens, 32)
    cos, sin = rope(q, positions[None])
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    cos_all, sin_all = rope(q, torch.arange(512)[None])
    cos_sin_cache = torch.cat([cos_all[0, :, :16], sin_all[0, :, :16]], dim=-1)
    q_ours, k_ours = q[0].transpose(0, 1).contiguous(), k[0].transpose(0, 1).contiguous()
    q_ret, k_ret = ops.apply_rotary(q_ours, k_ours, positions, cos_sin_cache)
    assert q_ret is q_ours and k_ret is k_ours  # in place
    torch.testing.assert_close(q_ours, q_hf[0].transpose(0, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(k_ours, k_hf[0].transpose(0, 1), rtol=0, atol=1e-6)


def test_silu_and_mul():
    x = torch.randn(6, 2 * 24)
    expected = torch.nn.functional.silu(x[:, :24]) * x[:, 24:]
    assert torch.equal(ops.silu_and_mul(x), expected)


def test_write_kv_cache_skips_negative_slots():
    k_cache = torch.randn(4, 8, 2, 16)
    v_cache = torch.randn(4, 8, 2, 16)
    k, v = torch.randn(5, 2, 16), torch.randn(5, 2, 16)
    slots = torch.tensor([3, -1, 17, 31, -1])
    k_before, v_before = k_cache.clone(), v_cache.clone()
    ops.write_kv_cache(k, v, k_cache, v_cache, slots)
    expected_k, expected_v = k_before.view(-1, 2, 16).clone(), v_before.view(-1, 2, 16).clone()
    expected_k[[3, 17, 31]] = k[[0, 2, 3]]
    expected_v[[3, 17, 31]] = v[[0, 2, 3]]
    assert torch.equal(k_cache.view(-1, 2, 16), expected_k)
    assert torch.equal(v_cache.view(-1, 2, 16), expected_v)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2), (8, 1)])
def test_paged_attention_matches_dense(num_heads, num_kv_heads):
    query_lens, seq_lens, block_size = [1, 5, 13, 1], [9, 5, 30, 16], 4
    q, k_cache, v_cache, meta = make_batch(
        query_lens,
        seq_lens,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=16,
        block_size=block_size,
        dtype=torch.float32,
    )
    out = ops.paged_attention(q, k_cache, v_cache, meta, scale=0.25)
    start = 0
    for b, (query_len, seq_len) in enumerate(zip(query_lens, seq_lens, strict=True)):
        k = reference.gather_context(k_cache, meta.block_tables[b], seq_len)
        v = reference.gather_context(v_cache, meta.block_tables[b], seq_len)
        expected = dense_causal_attention(q[start : start + query_len], k, v, 0.25)
        torch.testing.assert_close(out[start : start + query_len], expected)
        start += query_len


def test_gather_context_follows_block_table():
    cache = torch.arange(6 * 2).view(6, 2, 1, 1).float()
    context = reference.gather_context(cache, torch.tensor([4, 1, 5], dtype=torch.int32), 5)
    assert context.flatten().tolist() == [8, 9, 2, 3, 10]


def test_ops_import_and_run_without_triton():
    """lodger.kernels.ops must import, and its CPU path run, where triton is missing."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` fail
        "import torch\n"
        "from lodger.kernels import ops\n"
        "x = torch.randn(2, 8)\n"
        "assert ops.rms_norm(x, torch.ones(8), 1e-6).shape == (2, 8)\n"
        "assert not ops.use_triton(x)\n"
        "assert 'lodger.kernels.decode_attention' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_torch_ops_env_keeps_cpu_and_cuda_on_reference(monkeypatch):
    x = torch.randn(2, 8)
    assert not ops.use_triton(x)
    monkeypatch.setenv("LODGER_TORCH_OPS", "1")
    assert not ops.use_triton(x)
    if torch.cuda.is_available():
        assert not ops.use_triton(x.cuda())
        monkeypatch.setenv("LODGER_TORCH_OPS", "0")
        assert ops.use_triton(x.cuda())
