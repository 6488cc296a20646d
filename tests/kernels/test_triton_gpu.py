"""The compiled Triton kernels against their torch references in bf16 at real sizes (GPU).

Same checks as interpreted_cases.py (fresh random inputs, NaN-poisoned outputs, block and
tile boundaries, GQA 1/4/8, -1 slots), plus ops dispatch and CUDA-graph replays of decode.
"""

import sys

import pytest
import torch
from kernel_batches import make_batch, relative_error

from lodger.kernels import ops, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEVICE = "cuda"
BF16 = torch.bfloat16
BF16_TOLERANCE = 1e-2  # ‖out - ref‖ / ‖ref‖ for bf16 operands (float32 accumulation)


def nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


def batch(query_lens, seq_lens, num_heads, num_kv_heads, head_dim, block_size=16):
    return make_batch(
        query_lens, seq_lens, num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, block_size=block_size, dtype=BF16, device=DEVICE,
    )  # fmt: skip


def check(out, q, k_cache, v_cache, meta, scale):
    num_tokens = int(meta.query_start_loc[-1])
    assert not out[:num_tokens].isnan().any(), "an output element was not written"
    expected = reference.paged_attention(q, k_cache, v_cache, meta, scale)
    error = relative_error(out[:num_tokens], expected[:num_tokens])
    assert error < BF16_TOLERANCE, f"relative error {error:.2e}"


@pytest.mark.parametrize(
    "num_q_heads,num_kv_heads,head_dim", [(32, 8, 128), (16, 16, 64), (32, 4, 128), (64, 8, 64)]
)
@pytest.mark.parametrize("num_splits", [None, 1, 7])
def test_decode_attention(num_q_heads, num_kv_heads, head_dim, num_splits):
    from lodger.kernels.decode_attention import decode_attention

    seq_lens = [1, 16, 17, 64, 65, 128, 129, 1000, 4093, 8192]  # 128: the default tile
    q, k_cache, v_cache, meta = batch([1] * len(seq_lens), seq_lens, num_q_heads,
                                      num_kv_heads, head_dim)
    scale = head_dim**-0.5
    out = decode_attention(q, k_cache, v_cache, meta, scale, num_splits=num_splits, out=nan_like(q))
    check(out, q, k_cache, v_cache, meta, scale)


@pytest.mark.parametrize(
    "num_q_heads,num_kv_heads,head_dim", [(32, 8, 128), (16, 16, 64), (32, 4, 64)]
)
def test_prefill_attention_mixed_batch(num_q_heads, num_kv_heads, head_dim):
    from lodger.kernels.prefill_attention import prefill_attention

    query_lens = [1, 700, 1, 33, 1000, 5]
    seq_lens = [300, 700, 4097, 2080, 3000, 5]
    q, k_cache, v_cache, meta = batch(query_lens, seq_lens, num_q_heads, num_kv_heads, head_dim)
    scale = head_dim**-0.5
    padded = torch.cat([q, torch.randn(3, *q.shape[1:], device=DEVICE, dtype=BF16)])
    out = prefill_attention(padded, k_cache, v_cache, meta, scale, out=nan_like(padded))
    check(out, q, k_cache, v_cache, meta, scale)
    assert out[q.shape[0] :].isnan().all(), "padding rows must not be written"


def test_ops_dispatch_to_triton_on_cuda(monkeypatch):
    monkeypatch.delenv("LODGER_TORCH_OPS", raising=False)
    q, k_cache, v_cache, meta = batch([1, 1], [40, 300], 8, 2, 128)
    assert ops.use_triton(q)
    check(ops.paged_attention(q, k_cache, v_cache, meta, 0.1), q, k_cache, v_cache, meta, 0.1)
    q, k_cache, v_cache, meta = batch([5, 1], [40, 300], 8, 2, 128)
    check(ops.paged_attention(q, k_cache, v_cache, meta, 0.1), q, k_cache, v_cache, meta, 0.1)
    assert "lodger.kernels.decode_attention" in sys.modules
    assert "lodger.kernels.prefill_attention" in sys.modules


def test_decode_attention_cuda_graph_replays():
    """Captured once with max_seq_len baked in, replayed with other contexts and tables."""
    from lodger.kernels.decode_attention import decode_attention

    num_seqs, max_seq_len = 6, 2048
    q, k_cache, v_cache, meta = batch([1] * num_seqs, [max_seq_len] * num_seqs, 32, 8, 128)
    meta.max_seq_len = max_seq_len
    out = nan_like(q)
    decode_attention(q, k_cache, v_cache, meta, 0.09, out=out)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_attention(q, k_cache, v_cache, meta, 0.09, out=out)
    for seq_lens in ([1, 2, 17, 900, 2048, 33], [2048, 5, 64, 65, 1, 1500]):
        meta.seq_lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))
        meta.block_tables.copy_(meta.block_tables[torch.randperm(num_seqs)])
        q.copy_(torch.randn_like(q))
        out.fill_(float("nan"))
        graph.replay()
        check(out, q, k_cache, v_cache, meta, 0.09)


def test_decode_attention_variable_lengths_graph_width():
    """The engine's decode step: sequences of 1..2000 tokens, GQA 2 (qwen3-0.6b), and
    max_seq_len 40960 as a captured CUDA graph bakes in (the split count is chosen for the
    longest context the graph allows, so a short sequence leaves most of its splits empty)."""
    from lodger.kernels.decode_attention import decode_attention

    generator = torch.Generator().manual_seed(1)
    for num_seqs in (256, 16):  # one split; five
        seq_lens = torch.randint(1, 2001, (num_seqs,), generator=generator).tolist()
        q, k_cache, v_cache, meta = batch([1] * num_seqs, seq_lens, 16, 8, 128)
        meta.max_seq_len = 40960
        out = decode_attention(q, k_cache, v_cache, meta, 0.088, out=nan_like(q))
        check(out, q, k_cache, v_cache, meta, 0.088)


def test_write_kv_cache():
    from lodger.kernels.kv_cache_write import write_kv_cache

    num_blocks, block_size, num_kv_heads, head_dim, num_tokens = 300, 16, 8, 128, 2000
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, device=DEVICE).to(BF16)
    v_cache = torch.randn_like(k_cache)
    qkv = torch.randn(num_tokens, (32 + 2 * num_kv_heads) * head_dim, device=DEVICE).to(BF16)
    k = qkv[:, 32 * head_dim : 40 * head_dim].view(num_tokens, num_kv_heads, head_dim)
    v = qkv[:, 40 * head_dim :].view(num_tokens, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:num_tokens]
    slots[::7] = -1
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    reference.write_kv_cache(k, v, expected_k, expected_v, slots)
    write_kv_cache(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


def test_norms_rotary_and_activation():
    from lodger.kernels.activation import silu_and_mul
    from lodger.kernels.rms_norm import fused_add_rms_norm, rms_norm
    from lodger.kernels.rotary import apply_rotary

    num_tokens, hidden = 777, 4096
    x = torch.randn(num_tokens, hidden, device=DEVICE).to(BF16)
    residual = torch.randn_like(x)
    weight = torch.randn(hidden, device=DEVICE).to(BF16)
    out = rms_norm(x, weight, 1e-5, out=nan_like(x))
    torch.testing.assert_close(out, reference.rms_norm(x, weight, 1e-5))
    normed, summed = fused_add_rms_norm(x, residual, weight, 1e-5, nan_like(x), nan_like(x))
    expected_normed, expected_summed = reference.fused_add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(summed, expected_summed)
    torch.testing.assert_close(normed, expected_normed)

    gate_up = torch.randn(num_tokens, 2 * 14336, device=DEVICE).to(BF16)
    out = silu_and_mul(gate_up, out=torch.full_like(gate_up[:, :14336], float("nan")))
    torch.testing.assert_close(out, reference.silu_and_mul(gate_up))

    qkv = torch.randn(num_tokens, 48 * 128, device=DEVICE).to(BF16)
    q = qkv[:, : 32 * 128].view(num_tokens, 32, 128)
    k = qkv[:, 32 * 128 : 40 * 128].view(num_tokens, 8, 128)
    v_before = qkv[:, 40 * 128 :].clone()
    angles = torch.rand(8192, 64, device=DEVICE) * 1000
    cos_sin_cache = torch.cat([angles.cos(), angles.sin()], dim=-1)
    positions = torch.randint(0, 8192, (num_tokens,), device=DEVICE)
    expected_q, expected_k = reference.apply_rotary(q.clone(), k.clone(), positions, cos_sin_cache)
    apply_rotary(q, k, positions, cos_sin_cache)
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(k, expected_k)
    assert torch.equal(qkv[:, 40 * 128 :], v_before)

    q_weight, k_weight = (torch.randn(128, device=DEVICE).to(BF16) for _ in range(2))
    expected_q = reference.rms_norm(q, q_weight, 1e-6)
    expected_k = reference.rms_norm(k, k_weight, 1e-6)
    reference.apply_rotary(expected_q, expected_k, positions, cos_sin_cache)
    apply_rotary(q, k, positions, cos_sin_cache, q_weight, k_weight, 1e-6)  # Qwen3's q/k norm
    # a normed value one bf16 ulp apart (rsqrt and sum order differ from torch's) can
    # cancel in the rotation: a few near-zero outputs differ by more than bf16's rtol
    torch.testing.assert_close(q, expected_q, atol=1e-2, rtol=1.6e-2)
    torch.testing.assert_close(k, expected_k, atol=1e-2, rtol=1.6e-2)
    assert torch.equal(qkv[:, 40 * 128 :], v_before)


@pytest.mark.parametrize("seq_len", [1, 300, 8197])
def test_decode_attention_single_sequence_many_splits(seq_len):
    """Batch 1: the heuristic splits a long context up to 64 ways (most splits of a short
    context are empty when max_seq_len is the model's, as under CUDA graphs)."""
    from lodger.kernels.decode_attention import decode_attention

    q, k_cache, v_cache, meta = batch([1], [seq_len], 32, 8, 128)
    meta.max_seq_len = 8197
    out = decode_attention(q, k_cache, v_cache, meta, 0.088, out=nan_like(q))
    check(out, q, k_cache, v_cache, meta, 0.088)


def test_rotary_stores_kv_in_the_same_pass():
    """The rotary pass with kv_cache equals rotary then write_kv_cache, -1 slots skipped."""
    from lodger.kernels.rotary import apply_rotary

    num_tokens, num_blocks, block_size = 1000, 100, 16
    qkv = torch.randn(num_tokens, 48 * 128, device=DEVICE).to(BF16)
    q = qkv[:, : 32 * 128].view(num_tokens, 32, 128)
    k = qkv[:, 32 * 128 : 40 * 128].view(num_tokens, 8, 128)
    v = qkv[:, 40 * 128 :].view(num_tokens, 8, 128)
    angles = torch.rand(8192, 64, device=DEVICE) * 1000
    cos_sin_cache = torch.cat([angles.cos(), angles.sin()], dim=-1)
    positions = torch.randint(0, 8192, (num_tokens,), device=DEVICE)
    k_cache = torch.randn(num_blocks, block_size, 8, 128, device=DEVICE).to(BF16)
    v_cache = torch.randn_like(k_cache)
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:num_tokens]
    slots[::5] = -1
    expected_q, expected_k = reference.apply_rotary(q.clone(), k.clone(), positions, cos_sin_cache)
    expected_k_cache, expected_v_cache = k_cache.clone(), v_cache.clone()
    reference.write_kv_cache(expected_k, v, expected_k_cache, expected_v_cache, slots)
    apply_rotary(q, k, positions, cos_sin_cache, kv_cache=(v, k_cache, v_cache, slots))
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(k, expected_k)
    torch.testing.assert_close(k_cache, expected_k_cache)
    assert torch.equal(v_cache, expected_v_cache)
    kept = slots >= 0
    assert torch.equal(k_cache.view(-1, 8, 128)[slots[kept]], k[kept])


@pytest.mark.parametrize("num_rows", [1, 2, 5, 64, 200, 300])
def test_linear_configs_and_tuned_dispatch(num_rows):
    """Every candidate launch configuration at Llama-3-8B's o projection and an odd shape
    with a bias against F.linear in bf16; then tuning records a choice and ops.linear
    dispatches by it (cuBLAS above MAX_TUNED_ROWS)."""
    import torch.nn.functional as F

    from lodger.kernels import linear_tuning
    from lodger.kernels.linear import LinearConfig, linear

    for num_cols, depth, with_bias in ((4096, 4096, False), (1000, 1100, True)):
        x = torch.randn(num_rows, depth, device=DEVICE).to(BF16)
        weight = (torch.randn(num_cols, depth, device=DEVICE) / depth**0.5).to(BF16)
        bias = torch.randn(num_cols, device=DEVICE).to(BF16) if with_bias else None
        expected = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        for config in linear_tuning.candidates(num_rows, num_cols, depth):
            out = linear(
                x, weight, bias, config, out=torch.full_like(expected, float("nan")).to(BF16)
            )
            assert not out.isnan().any(), f"{config} left elements unwritten"
            error = relative_error(out.float(), expected)
            assert error < BF16_TOLERANCE, f"{config}: relative error {error:.2e}"
    linear_tuning.clear()
    try:
        weights = [(torch.randn(1024, 2048, device=DEVICE) / 45).to(BF16) for _ in range(4)]
        results = linear_tuning.tune_weights(weights, [num_rows])
        assert len(results) == 1 and results[0].batch_size == num_rows
        chosen = results[0].config
        if num_rows > linear_tuning.MAX_TUNED_ROWS:
            assert chosen is None
        assert results[0].best_us <= results[0].cublas_us
        x = torch.randn(num_rows, 2048, device=DEVICE).to(BF16)
        out = ops.linear(x, weights[0])
        assert relative_error(out.float(), F.linear(x, weights[0]).float()) < BF16_TOLERANCE
        # a configuration the card cannot run (too much shared memory) is skipped
        too_big = LinearConfig(block_m=64, block_n=256, block_k=512, num_stages=4)
        results = linear_tuning.tune_weights(weights, [3], make_candidates=lambda *_: [too_big])
        assert results[0].config is None
    finally:
        linear_tuning.clear()


def test_silu_and_mul_fused_into_the_tuned_gemv():
    """Where tuning chose the GEMV, ops.silu_and_mul_linear is one launch and equals
    silu_and_mul then the same GEMV bit for bit (bf16, Llama-3-8B's down projection)."""
    from lodger.kernels import linear_tuning
    from lodger.kernels.activation import silu_and_mul
    from lodger.kernels.linear import LinearConfig, linear

    weight = (torch.randn(4096, 14336, device=DEVICE) / 120).to(BF16)
    gate_up = torch.randn(1, 2 * 14336, device=DEVICE).to(BF16)
    gemv = LinearConfig(kind="gemv", block_n=4, block_k=512, num_stages=4)
    expected = linear(silu_and_mul(gate_up), weight, None, gemv)
    linear_tuning.clear()
    try:
        linear_tuning._CHOICES[linear_tuning._key(weight)] = linear_tuning.ShapeChoice([1], [gemv])
        assert torch.equal(ops.silu_and_mul_linear(gate_up, weight), expected)
        two = torch.randn(2, 2 * 14336, device=DEVICE).to(BF16)  # untuned size: two launches
        reference_two = torch.nn.functional.linear(silu_and_mul(two), weight)
        assert torch.equal(ops.silu_and_mul_linear(two, weight), reference_two)
    finally:
        linear_tuning.clear()


@pytest.mark.parametrize("num_rows", [5, 64, 256])
def test_linear_split_k_partials_summed_by_the_norm(num_rows):
    """bf16 at qwen3-0.6b's down projection (split 4, with a bias) and Llama-3-8B's o
    projection (split 2): the fused add of the unsummed partials equals linear() then the
    fused add bit for bit; where tuning chose a split K, ops.linear(unreduced=True) and
    ops.silu_and_mul_linear(unreduced=True) hand the partials on and the result is the same."""
    from lodger.kernels import linear_tuning
    from lodger.kernels.activation import silu_and_mul
    from lodger.kernels.linear import LinearConfig, SplitKPartials, linear, linear_unreduced
    from lodger.kernels.rms_norm import fused_add_rms_norm

    block_m = 128 if num_rows > 64 else min(64, max(16, 1 << (num_rows - 1).bit_length()))
    cases = ((1024, 3072, True, 4), (4096, 4096, False, 2))
    for num_cols, depth, with_bias, split_k in cases:
        config = LinearConfig(block_m=block_m, block_n=64, block_k=128, split_k=split_k,
                              num_warps=8 if block_m == 128 else 4)  # fmt: skip
        x = torch.randn(num_rows, depth, device=DEVICE).to(BF16)
        weight = (torch.randn(num_cols, depth, device=DEVICE) / depth**0.5).to(BF16)
        bias = torch.randn(num_cols, device=DEVICE).to(BF16) if with_bias else None
        residual = torch.randn(num_rows, num_cols, device=DEVICE).to(BF16)
        norm_weight = torch.randn(num_cols, device=DEVICE).to(BF16)
        partials = linear_unreduced(x, weight, bias, config)
        assert isinstance(partials, SplitKPartials) and partials.partials.shape[0] == split_k
        expected = fused_add_rms_norm(linear(x, weight, bias, config), residual, norm_weight, 1e-6)
        normed, summed = fused_add_rms_norm(
            partials, residual, norm_weight, 1e-6, nan_like(residual), nan_like(residual)
        )
        assert torch.equal(normed, expected[0]) and torch.equal(summed, expected[1])
        linear_tuning.clear()
        try:
            choice = linear_tuning.ShapeChoice([num_rows], [config])
            linear_tuning._CHOICES[linear_tuning._key(weight)] = choice
            handed_on = ops.linear(x, weight, bias, unreduced=True)
            assert isinstance(handed_on, SplitKPartials)
            got = ops.fused_add_rms_norm(handed_on, residual, norm_weight, 1e-6)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
            assert torch.equal(ops.linear(x, weight, bias), linear(x, weight, bias, config))
            gate_up = torch.randn(num_rows, 2 * depth, device=DEVICE).to(BF16)
            gated = ops.silu_and_mul_linear(gate_up, weight, bias, unreduced=True)
            assert isinstance(gated, SplitKPartials)
            reduced = linear(silu_and_mul(gate_up), weight, bias, config)
            assert torch.equal(gated.reduce(), reduced)
        finally:
            linear_tuning.clear()


def test_tuning_never_chooses_a_wrong_kernel(monkeypatch):
    """A candidate whose output is off cuBLAS's is skipped however fast it is."""
    from lodger.kernels import linear_tuning
    from lodger.kernels.linear import LinearConfig

    def zeros(x, weight, bias, config):
        return torch.zeros(x.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)

    monkeypatch.setattr(linear_tuning, "triton_linear", zeros)
    weights = [(torch.randn(1024, 2048, device=DEVICE) / 45).to(BF16) for _ in range(4)]
    linear_tuning.clear()
    try:
        config = LinearConfig(kind="gemv", block_n=8, block_k=512)
        results = linear_tuning.tune_weights(weights, [1], make_candidates=lambda *_: [config])
        assert results[0].config is None
        assert linear_tuning._CHOICES[linear_tuning._key(weights[0])].lookup(1) is None
    finally:
        linear_tuning.clear()
