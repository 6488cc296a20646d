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
