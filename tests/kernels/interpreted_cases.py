"""Every Triton kernel against its torch reference under the Triton interpreter (CPU).

Not collected by itself: test_triton_interpreted.py runs this file in a fresh Python with
TRITON_INTERPRET=1, because the variable only takes effect if it is set before triton is
first imported (and transformers imports triton). The interpreter computes bf16 tl.dot
wrongly, so float32 and float16 only. Inputs are fresh random draws each run and outputs
are poisoned with NaN before each launch.
"""

import os

import numpy as np
import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run through test_triton_interpreted.py", allow_module_level=True)

from kernel_batches import make_batch, relative_error

from lodger.kernels import reference
from lodger.kernels.activation import silu_and_mul
from lodger.kernels.attention_metadata import (
    max_prefill_tiles,
    num_prefill_tiles,
    plan_prefill_tiles,
)
from lodger.kernels.decode_attention import DecodeConfig, choose_num_splits, decode_attention
from lodger.kernels.kv_cache_write import write_kv_cache
from lodger.kernels.linear import LinearConfig, SplitKPartials, linear, linear_unreduced
from lodger.kernels.prefill_attention import PrefillConfig, prefill_attention, queries_per_tile
from lodger.kernels.rms_norm import fused_add_rms_norm, rms_norm
from lodger.kernels.rotary import apply_rotary

DTYPES = [torch.float32, torch.float16]
# ‖out - ref‖ / ‖ref‖ bounds: float32 math lands far below 1e-5; float16 operands near 1e-3
ATTENTION_TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3}


def nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_kv_heads,head_dim", [(1, 64), (3, 128), (8, 64)])
def test_write_kv_cache(dtype, num_kv_heads, head_dim):
    num_blocks, block_size, num_tokens = 5, 16, 11
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(cache_shape).to(dtype)
    v_cache = torch.randn(cache_shape).to(dtype)
    # k and v as strided views of a packed qkv projection, as the model produces them
    qkv = torch.randn(num_tokens, (2 + 2 * num_kv_heads) * head_dim).to(dtype)
    k = qkv[:, 2 * head_dim : (2 + num_kv_heads) * head_dim].view(-1, num_kv_heads, head_dim)
    v = qkv[:, (2 + num_kv_heads) * head_dim :].view(-1, num_kv_heads, head_dim)
    # distinct slots, the first two on both sides of a block boundary, two padding tokens
    others = torch.randperm(num_blocks * block_size - 2)[: num_tokens - 2]
    slots = torch.cat([torch.tensor([15, 16]), others + 2 * (others >= 15)])
    slots[[2, 7]] = -1
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    reference.write_kv_cache(k, v, expected_k, expected_v, slots)
    write_kv_cache(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, expected_k)
    assert torch.equal(v_cache, expected_v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_and_fused_add(dtype):
    num_tokens, hidden = 5, 100  # hidden not a power of two: masked tail
    wide = torch.randn(num_tokens, hidden + 28).to(dtype)
    x = wide[:, :hidden]  # strided rows
    residual = torch.randn(num_tokens, hidden).to(dtype)
    weight = torch.randn(hidden).to(dtype)
    tolerance = {"rtol": 0, "atol": 1e-5} if dtype == torch.float32 else {}
    out = rms_norm(x, weight, 1e-6, out=nan_like(residual))
    torch.testing.assert_close(out, reference.rms_norm(x, weight, 1e-6), **tolerance)
    x_before, residual_before = x.clone(), residual.clone()
    normed, summed = fused_add_rms_norm(
        x, residual, weight, 1e-6, out=nan_like(residual), summed=nan_like(residual)
    )
    expected_normed, expected_summed = reference.fused_add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(summed, expected_summed)
    torch.testing.assert_close(normed, expected_normed, **tolerance)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rotary_dim", [64, 32])
def test_apply_rotary_in_place(dtype, rotary_dim):
    num_tokens, num_q_heads, num_kv_heads, head_dim, max_pos = 7, 6, 2, 64, 300
    qkv = torch.randn(num_tokens, (num_q_heads + 2 * num_kv_heads) * head_dim).to(dtype)
    q = qkv[:, : num_q_heads * head_dim].view(num_tokens, num_q_heads, head_dim)
    k = qkv[:, num_q_heads * head_dim : (num_q_heads + num_kv_heads) * head_dim]
    k = k.view(num_tokens, num_kv_heads, head_dim)
    v_before = qkv[:, (num_q_heads + num_kv_heads) * head_dim :].clone()
    angles = torch.rand(max_pos, rotary_dim // 2) * 100
    cos_sin_cache = torch.cat([angles.cos(), angles.sin()], dim=-1)
    positions = torch.randint(0, max_pos, (num_tokens,))
    expected_q, expected_k = reference.apply_rotary(q.clone(), k.clone(), positions, cos_sin_cache)
    q_out, k_out = apply_rotary(q, k, positions, cos_sin_cache)
    assert q_out is q and k_out is k
    tolerance = {"rtol": 0, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(q, expected_q, **tolerance)
    torch.testing.assert_close(k, expected_k, **tolerance)
    assert torch.equal(qkv[:, (num_q_heads + num_kv_heads) * head_dim :], v_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_qk_norm_fused_into_rotary(dtype):
    """Qwen3's per-head q/k RMSNorm in the rotary pass, on strided views of qkv, equals the
    norm then the rotation (and leaves v alone)."""
    num_tokens, num_q_heads, num_kv_heads, head_dim, max_pos = 5, 4, 2, 32, 100
    qkv = torch.randn(num_tokens, (num_q_heads + 2 * num_kv_heads) * head_dim).to(dtype) * 3
    q = qkv[:, : num_q_heads * head_dim].view(num_tokens, num_q_heads, head_dim)
    k = qkv[:, num_q_heads * head_dim : (num_q_heads + num_kv_heads) * head_dim]
    k = k.view(num_tokens, num_kv_heads, head_dim)
    v_before = qkv[:, (num_q_heads + num_kv_heads) * head_dim :].clone()
    q_weight, k_weight = (torch.randn(head_dim).to(dtype) for _ in range(2))
    angles = torch.rand(max_pos, head_dim // 2) * 100
    cos_sin_cache = torch.cat([angles.cos(), angles.sin()], dim=-1)
    positions = torch.randint(0, max_pos, (num_tokens,))
    expected_q = reference.rms_norm(q, q_weight, 1e-6)
    expected_k = reference.rms_norm(k, k_weight, 1e-6)
    reference.apply_rotary(expected_q, expected_k, positions, cos_sin_cache)
    apply_rotary(q, k, positions, cos_sin_cache, q_weight, k_weight, 1e-6)
    tolerance = {"rtol": 0, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(q, expected_q, **tolerance)
    torch.testing.assert_close(k, expected_k, **tolerance)
    assert torch.equal(qkv[:, (num_q_heads + num_kv_heads) * head_dim :], v_before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rotary_dim,norm", [(64, False), (32, False), (64, True)])
def test_rotary_stores_kv_in_the_same_pass(dtype, rotary_dim, norm):
    """apply_rotary with kv_cache: q and k come out exactly as without it (norm first when
    given), and the rotated k and the v rows land at their slots; -1 slots are skipped,
    every other cache element is left as it was."""
    num_tokens, num_q_heads, num_kv_heads, head_dim, max_pos = 9, 4, 2, 64, 200
    num_blocks, block_size = 4, 16
    qkv = torch.randn(num_tokens, (num_q_heads + 2 * num_kv_heads) * head_dim).to(dtype) * 2
    q = qkv[:, : num_q_heads * head_dim].view(num_tokens, num_q_heads, head_dim)
    k = qkv[:, num_q_heads * head_dim : (num_q_heads + num_kv_heads) * head_dim]
    k = k.view(num_tokens, num_kv_heads, head_dim)
    v = qkv[:, (num_q_heads + num_kv_heads) * head_dim :].view(num_tokens, num_kv_heads, head_dim)
    weights = [torch.randn(head_dim).to(dtype) for _ in range(2)] if norm else [None, None]
    angles = torch.rand(max_pos, rotary_dim // 2) * 100
    cos_sin_cache = torch.cat([angles.cos(), angles.sin()], dim=-1)
    positions = torch.randint(0, max_pos, (num_tokens,))
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = torch.randn(cache_shape).to(dtype), torch.randn(cache_shape).to(dtype)
    others = torch.randperm(num_blocks * block_size - 2)[: num_tokens - 2]
    slots = torch.cat([torch.tensor([15, 16]), others + 2 * (others >= 15)])
    slots[[3, 6]] = -1
    # the same kernel without the cache write (checked against the torch reference by the
    # rotary tests above), then the reference's copy into the caches: all must match exactly
    expected_q, expected_k = apply_rotary(
        q.clone(), k.clone(), positions, cos_sin_cache, *weights, 1e-6
    )
    expected_k_cache, expected_v_cache = k_cache.clone(), v_cache.clone()
    reference.write_kv_cache(expected_k, v, expected_k_cache, expected_v_cache, slots)
    apply_rotary(
        q, k, positions, cos_sin_cache, *weights, 1e-6, kv_cache=(v, k_cache, v_cache, slots)
    )
    assert torch.equal(q, expected_q) and torch.equal(k, expected_k)
    assert torch.equal(k_cache, expected_k_cache) and torch.equal(v_cache, expected_v_cache)
    written = slots[slots >= 0]
    assert torch.equal(k_cache.view(-1, num_kv_heads, head_dim)[written], k[slots >= 0])


LINEAR_CONFIGS = [
    LinearConfig(kind="gemv", block_n=4, block_k=64, num_stages=2),
    LinearConfig(kind="gemv", block_n=16, block_k=32),
    LinearConfig(block_m=16, block_n=32, block_k=32),
    LinearConfig(block_m=32, block_n=16, block_k=64, split_k=3, num_stages=3),
    LinearConfig(block_m=128, block_n=32, block_k=32, split_k=2, num_warps=8),  # 128+ rows
]


LINEAR_SHAPES = [(1, 40, 128), (3, 33, 200), (37, 64, 96), (150, 24, 64)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "config,num_rows,num_cols,depth",
    [(config, *shape) for config in LINEAR_CONFIGS for shape in LINEAR_SHAPES
     # the GEMV serves one or two rows; 150 rows is the tl.dot kernel's case (two M tiles)
     if config.kind == "dot" or shape[0] < 64],
    ids=str,
)  # fmt: skip
def test_linear(dtype, config, num_rows, num_cols, depth):
    """x @ w.T (+ bias) for odd sizes (masked rows, columns and K tail), into a poisoned out."""
    x = torch.randn(num_rows, depth + 8).to(dtype)[:, :depth]  # strided rows
    weight = (torch.randn(num_cols, depth) / depth**0.5).to(dtype)
    bias = torch.randn(num_cols).to(dtype)
    tolerance = {"rtol": 0, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0, "atol": 4e-3}
    for b in (None, bias):
        out = torch.full((num_rows, num_cols), float("nan"), dtype=dtype)
        result = linear(x, weight, b, config, out=out)
        assert result is out
        expected = torch.nn.functional.linear(
            x.float(), weight.float(), None if b is None else b.float()
        )
        torch.testing.assert_close(out.float(), expected, **tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_add_rms_norm_sums_split_k_partials(dtype, with_bias):
    """A split-K matmul's partials, left unsummed, go straight into the fused add: the
    result equals the summed matmul then the fused add bit for bit (poisoned outputs)."""
    num_rows, hidden, depth = 37, 100, 96  # two M tiles, a masked tail of the row
    split = LinearConfig(block_m=16, block_n=32, block_k=32, split_k=3)
    x = torch.randn(num_rows, depth + 8).to(dtype)[:, :depth]  # strided rows
    weight = (torch.randn(hidden, depth) / depth**0.5).to(dtype)
    bias = torch.randn(hidden).to(dtype) if with_bias else None
    residual = torch.randn(num_rows, hidden).to(dtype)
    norm_weight = torch.randn(hidden).to(dtype)
    partials = linear_unreduced(x, weight, bias, split)
    assert isinstance(partials, SplitKPartials) and partials.partials.shape == (3, 37, 100)
    summed_matmul = linear(x, weight, bias, split)
    assert torch.equal(partials.reduce(out=nan_like(residual)), summed_matmul)
    expected = fused_add_rms_norm(summed_matmul, residual, norm_weight, 1e-6)
    got = fused_add_rms_norm(
        partials, residual, norm_weight, 1e-6, out=nan_like(residual), summed=nan_like(residual)
    )
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    whole = LinearConfig(block_m=16, block_n=32, block_k=32)  # one split: a plain tensor
    assert torch.equal(linear_unreduced(x, weight, bias, whole), linear(x, weight, bias, whole))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", [c for c in LINEAR_CONFIGS if c.kind == "gemv"], ids=str)
@pytest.mark.parametrize("num_rows,num_cols,depth", [(1, 40, 128), (2, 33, 200)])
def test_gemv_with_silu_and_mul_input(dtype, config, num_rows, num_cols, depth):
    """gated=True: the GEMV of silu(gate) * up is exactly silu_and_mul's kernel, then it."""
    gate_up = torch.randn(num_rows, 2 * depth + 8).to(dtype)[:, : 2 * depth]  # strided rows
    weight = (torch.randn(num_cols, depth) / depth**0.5).to(dtype)
    bias = torch.randn(num_cols).to(dtype)
    for b in (None, bias):
        out = torch.full((num_rows, num_cols), float("nan"), dtype=dtype)
        linear(gate_up, weight, b, config, out=out, gated=True)
        assert torch.equal(out, linear(silu_and_mul(gate_up), weight, b, config))


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype):
    x = torch.randn(3, 2 * 1100).to(dtype)  # two column chunks of 1024, masked tail
    out = silu_and_mul(x, out=torch.full((3, 1100), float("nan"), dtype=dtype))
    tolerance = {"rtol": 0, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(out, reference.silu_and_mul(x), **tolerance)


# (num_q_heads, num_kv_heads, head_dim): GQA ratios 1, 4 and 8; head_dim 64 and 128
ATTENTION_SHAPES = [(4, 4, 64), (8, 2, 128), (8, 1, 64)]


def check_attention(out, q, k_cache, v_cache, meta, scale, dtype, num_tokens):
    assert not out[:num_tokens].isnan().any(), "an output element was not written"
    expected = reference.paged_attention(q, k_cache, v_cache, meta, scale)
    error = relative_error(out[:num_tokens], expected[:num_tokens])
    assert error < ATTENTION_TOLERANCE[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim", ATTENTION_SHAPES)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_attention(dtype, num_q_heads, num_kv_heads, head_dim, num_splits):
    # contexts: one token, block boundaries (16, 17), the default 128-token tile's
    # boundaries (128, 129), several tiles
    seq_lens = [1, 16, 17, 128, 129, 300]
    q, k_cache, v_cache, meta = make_batch(
        [1] * len(seq_lens), seq_lens, num_heads=num_q_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, block_size=16, dtype=dtype,
    )  # fmt: skip
    scale = head_dim**-0.5
    out = decode_attention(q, k_cache, v_cache, meta, scale, num_splits=num_splits, out=nan_like(q))
    check_attention(out, q, k_cache, v_cache, meta, scale, dtype, len(seq_lens))


def test_decode_attention_small_tiles_many_splits():
    """More splits than a short context has tiles: empty splits must merge to nothing."""
    seq_lens = [3, 40, 97]
    q, k_cache, v_cache, meta = make_batch(
        [1, 1, 1], seq_lens, num_heads=8, num_kv_heads=2, head_dim=32, block_size=8,
        dtype=torch.float32,
    )  # fmt: skip
    config = DecodeConfig(block_n=16)
    out = decode_attention(q, k_cache, v_cache, meta, 0.2, config, num_splits=5, out=nan_like(q))
    check_attention(out, q, k_cache, v_cache, meta, 0.2, torch.float32, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim", ATTENTION_SHAPES)
def test_prefill_attention_mixed_batch(dtype, num_q_heads, num_kv_heads, head_dim):
    # a fresh prompt, decodes, a chunk extending a cached context across block boundaries
    query_lens = [23, 1, 1, 9, 37]
    seq_lens = [23, 1, 50, 40, 70]
    q, k_cache, v_cache, meta = make_batch(
        query_lens, seq_lens, num_heads=num_q_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, block_size=16, dtype=dtype,
    )  # fmt: skip
    scale = head_dim**-0.5
    padded = torch.cat([q, torch.randn(2, *q.shape[1:]).to(dtype)])  # 2 padding tokens
    out = prefill_attention(padded, k_cache, v_cache, meta, scale, out=nan_like(padded))
    check_attention(out, q, k_cache, v_cache, meta, scale, dtype, sum(query_lens))
    assert out[sum(query_lens) :].isnan().all(), "padding rows must not be written"


def test_prefill_attention_group_not_dividing_tile():
    """GQA ratio 3 and small tiles: tiles hold 5 queries x 3 heads and a masked 16th row."""
    query_lens, seq_lens = [12, 1, 20], [30, 7, 20]
    q, k_cache, v_cache, meta = make_batch(
        query_lens, seq_lens, num_heads=6, num_kv_heads=2, head_dim=32, block_size=4,
        dtype=torch.float32,
    )  # fmt: skip
    config = PrefillConfig(block_rows=16, block_n=16)
    out = prefill_attention(q, k_cache, v_cache, meta, 0.3, config, out=nan_like(q))
    check_attention(out, q, k_cache, v_cache, meta, 0.3, torch.float32, sum(query_lens))


def test_prefill_attention_work_list_with_spare_rows():
    """The engine's work list, padded to a CUDA graph's capacity with rows of sequence -1,
    and sequences past the batch's (a graph's spare rows) that no tile names."""
    query_lens, seq_lens = [13, 1, 6], [20, 9, 6]
    q, k_cache, v_cache, meta = make_batch(
        query_lens, seq_lens, num_heads=4, num_kv_heads=2, head_dim=32, block_size=4,
        dtype=torch.float32,
    )  # fmt: skip
    config = PrefillConfig(block_rows=8, block_n=16)
    tile_queries = queries_per_tile(4, 2, config)
    assert tile_queries == 4
    lens = np.array(query_lens)
    capacity = max_prefill_tiles(sum(query_lens), 8, tile_queries)
    tiles = np.full((capacity, 2), -1, dtype=np.int32)
    used = num_prefill_tiles(lens, tile_queries)
    assert used == 4 + 1 + 2 < capacity
    plan_prefill_tiles(lens, tile_queries, tiles[:used])
    meta.prefill_tiles = torch.from_numpy(tiles)
    meta.prefill_tile_queries = tile_queries
    out = prefill_attention(q, k_cache, v_cache, meta, 0.3, config, out=nan_like(q))
    check_attention(out, q, k_cache, v_cache, meta, 0.3, torch.float32, sum(query_lens))
    # a list that leaves a tile out leaves its rows unwritten: the kernel follows the list
    tiles[0] = -1  # sequence 0's last tile: its queries 12..12
    out = prefill_attention(q, k_cache, v_cache, meta, 0.3, config, out=nan_like(q))
    assert out[12].isnan().all() and not out[:12].isnan().any() and not out[13:].isnan().any()


def test_choose_num_splits_fills_the_gpu_without_tiny_splits():
    config = DecodeConfig(min_tokens_per_split=128, target_programs=528)
    assert choose_num_splits(1, 8, 4096, config) == 32  # bounded by 4096 / 128 tokens
    assert choose_num_splits(1, 8, 100, config) == 1  # a short context is never split
    assert choose_num_splits(32, 8, 8192, config) == 3  # ceil(528 / 256) programs' worth
    assert choose_num_splits(128, 8, 8192, config) == 1  # the batch fills the GPU
    assert choose_num_splits(1, 1, 10**6, config) == 64  # capped
