"""Programmatic dependent launch (lodger.kernels.pdl) on a Hopper card.

A long chain of dependent lodger kernels, each reading what the previous one wrote, run
eagerly and as a CUDA-graph replay with PDL on, must give bit for bit what the same chain
gives with PDL off: a kernel that started reading before its predecessor finished would see
stale or NaN-poisoned memory and change the result.
"""

import pytest
import torch

from lodger.kernels import pdl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
        reason="needs a CUDA device of compute capability 9.0 or newer",
    ),
]
HIDDEN, INTERMEDIATE, LAYERS = 1024, 2816, 24


def set_pdl(monkeypatch, enabled: bool) -> None:
    monkeypatch.setenv("LODGER_PDL", "1" if enabled else "0")
    pdl._enabled.cache_clear()


def layer_chain(x, residual, weights):
    """Decoder-layer-shaped chain at one row: norm, GEMV, SiLU, GEMV, per layer."""
    from lodger.kernels.activation import silu_and_mul
    from lodger.kernels.linear import LinearConfig, linear
    from lodger.kernels.rms_norm import fused_add_rms_norm

    gemv = LinearConfig(kind="gemv", block_n=8, block_k=512, num_stages=2)
    for norm_weight, up, down in weights:
        normed, residual = fused_add_rms_norm(x, residual, norm_weight, 1e-6)
        x = linear(silu_and_mul(linear(normed, up, None, gemv)), down, None, gemv)
    return x + residual


def make_inputs():
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.bfloat16) * scale

    weights = [
        (1 + randn(HIDDEN, scale=0.1), randn(2 * INTERMEDIATE, HIDDEN, scale=0.03),
         randn(HIDDEN, INTERMEDIATE, scale=0.02))
        for _ in range(LAYERS)
    ]  # fmt: skip
    return randn(1, HIDDEN), randn(1, HIDDEN), weights


def test_launch_options_turn_pdl_on_for_this_card(monkeypatch):
    set_pdl(monkeypatch, True)
    assert pdl.launch_options(torch.device("cuda")) == {"USE_PDL": True, "launch_pdl": True}
    assert pdl.launch_options(torch.device("cpu")) == {"USE_PDL": False}
    set_pdl(monkeypatch, False)
    assert pdl.launch_options(torch.device("cuda")) == {"USE_PDL": False}


def test_dependent_chain_equals_the_chain_without_pdl(monkeypatch):
    x, residual, weights = make_inputs()
    set_pdl(monkeypatch, False)
    expected = layer_chain(x, residual, weights)
    assert torch.isfinite(expected).all()

    set_pdl(monkeypatch, True)
    assert torch.equal(layer_chain(x, residual, weights), expected), "eager, PDL on"

    static_x, static_residual = x.clone(), residual.clone()
    layer_chain(static_x, static_residual, weights)  # compile before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = layer_chain(static_x, static_residual, weights)
    for replay in range(5):
        static_out.fill_(float("nan"))
        static_x.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, expected), f"CUDA-graph replay {replay}, PDL on"


ATTENTION_LAYERS = 16


def attention_chain(x, qkv_layers, caches, positions, cos_sin, meta):
    """Per layer: the rotary pass stores the new token's K/V, then decode attention reads
    it with the rotary pass as the kernel right before it (the PDL edge under test); the
    output feeds the next layer's q."""
    from lodger.kernels.decode_attention import decode_attention
    from lodger.kernels.rotary import apply_rotary

    for qkv_base, (k_cache, v_cache) in zip(qkv_layers, caches, strict=True):
        qkv = qkv_base.clone()
        qkv[:, : 32 * 128] += x.reshape(1, -1)
        q = qkv[:, : 32 * 128].view(1, 32, 128)
        k = qkv[:, 32 * 128 : 40 * 128].view(1, 8, 128)
        v = qkv[:, 40 * 128 :].view(1, 8, 128)
        apply_rotary(q, k, positions, cos_sin, kv_cache=(v, k_cache, v_cache, meta.slot_mapping))
        x = decode_attention(q, k_cache, v_cache, meta, 0.088)
    return x


@pytest.mark.parametrize("seq_len,max_seq_len", [(1000, 1000), (700, 8192), (700, 40960)])
def test_decode_attention_after_the_rotary_pass_reads_the_new_kv(monkeypatch, seq_len,
                                                                  max_seq_len):  # fmt: skip
    """Batch-1 decode attention loads its sequence length and query start before its PDL
    wait, and the cache only after it: the rotary pass right before it stores the newest
    token's K/V row. With that row poisoned (NaN) before each run, PDL on must give PDL
    off's result bit for bit, eagerly and in graph replays, at split counts of 8 (1000
    tokens) and 64 (a CUDA graph's max_seq_len 8192 or 40960)."""
    from kernel_batches import make_batch

    gen = torch.Generator().manual_seed(0)
    _, k_cache, v_cache, meta = make_batch(
        [1], [seq_len], num_heads=32, num_kv_heads=8, head_dim=128, block_size=16,
        dtype=torch.bfloat16, device="cuda", generator=gen,
    )  # fmt: skip
    # one cache per layer, the same block layout (one block table), each layer's own
    # new K/V from its own qkv
    caches = [(k_cache.clone(), v_cache.clone()) for _ in range(ATTENTION_LAYERS)]
    meta.max_seq_len = max_seq_len  # a CUDA graph's is max_model_len
    qkv_layers = [torch.randn(1, 48 * 128, generator=gen).to("cuda", torch.bfloat16)
                  for _ in range(ATTENTION_LAYERS)]  # fmt: skip
    angles = torch.rand(8192 * 5, 64, generator=gen).to("cuda") * 1000
    cos_sin = torch.cat([angles.cos(), angles.sin()], dim=-1)
    positions = torch.tensor([seq_len - 1], device="cuda")
    x0 = torch.zeros(1, 32 * 128, device="cuda", dtype=torch.bfloat16)
    slot = int(meta.slot_mapping[0])
    pristine = [(k.clone(), v.clone()) for k, v in caches]

    def reset() -> None:
        for (k, v), (k0, v0) in zip(caches, pristine, strict=True):
            k.copy_(k0)
            v.copy_(v0)
            k.view(-1, 8, 128)[slot] = float("nan")
            v.view(-1, 8, 128)[slot] = float("nan")
        torch.cuda.synchronize()

    set_pdl(monkeypatch, False)
    reset()
    expected = attention_chain(x0, qkv_layers, caches, positions, cos_sin, meta).clone()
    assert torch.isfinite(expected.float()).all()

    set_pdl(monkeypatch, True)
    reset()
    got = attention_chain(x0, qkv_layers, caches, positions, cos_sin, meta)
    assert torch.equal(got, expected), "eager, PDL on"

    reset()
    attention_chain(x0, qkv_layers, caches, positions, cos_sin, meta)  # compile first
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = attention_chain(x0, qkv_layers, caches, positions, cos_sin, meta)
    for replay in range(5):
        reset()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, expected), f"CUDA-graph replay {replay}, PDL on"
