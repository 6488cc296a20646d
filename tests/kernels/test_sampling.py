"""The fused sampling kernel (lodger.kernels.sampling) and its torch reference.

CPU: the reference's Philox against Random123's known answers, and its draws against the
softmax by chi-square; the kernel itself under the Triton interpreter through
test_triton_interpreted's runner (the cases are in sampling_cases.py). GPU: the compiled
kernel at real sizes in float32 and bf16, bit-exact uniforms, greedy rows, splits, no host
synchronisation, and the distribution over a full vocabulary.
"""

from pathlib import Path

import pytest
import torch

sampling = pytest.importorskip("lodger.kernels.sampling")

CUDA = torch.cuda.is_available()
# chi-square 99.9% quantiles by degrees of freedom (fixed seeds: the tests are deterministic)
CHI2_999 = {3: 16.27, 7: 24.32}
PROBS = torch.tensor([0.10, 0.02, 0.30, 0.12, 0.04, 0.20, 0.07, 0.15], dtype=torch.float64)


def softmax_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return (logits.double() / temperature).softmax(dim=-1)


def chi_square(token_ids: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's statistic of the drawn ids against probabilities `expected` (all > 0)."""
    counts = torch.bincount(token_ids.cpu(), minlength=len(expected)).double()
    mean = expected.cpu() * len(token_ids)
    return float(((counts - mean) ** 2 / mean).sum())


def check_tokens(tokens, logits, temperature, uniforms, tolerance=1e-4):
    """The kernel's tokens are the reference's argmax given the same uniforms: each chosen
    score is the row's best up to float rounding, and rows without a near-tie agree."""
    scores = sampling.reference_scores(logits, temperature, uniforms)
    tokens = tokens.to(scores.device)
    best = scores.max(dim=-1)
    chosen = scores.gather(1, tokens[:, None]).squeeze(1)
    assert bool((chosen >= best.values - tolerance).all()), "a token is not the best score"
    runner_up = scores.topk(2, dim=-1).values[:, 1]
    clear = (best.values - runner_up) > tolerance
    assert torch.equal(tokens[clear], best.indices[clear])


# ---- CPU -----------------------------------------------------------------------------------


def test_reference_philox_matches_random123_known_answers():
    words = lambda *x: [w.item() for w in sampling.philox4x32(*x)]  # noqa: E731
    t = lambda x: torch.tensor([x])  # noqa: E731
    assert words(t(0), t(0), t(0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert words(t(-1), t(2**32 - 1), t(2**32 - 1), 2**32 - 1, 2**32 - 1) == [
        0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD,
    ]  # fmt: skip
    assert words(t(0x299F31D0A4093822), t(0x243F6A88), t(0x85A308D3), 0x13198A2E, 0x03707344) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1,
    ]  # fmt: skip


def test_reference_uniforms_lie_in_the_open_interval_and_vary_by_step():
    seeds = torch.tensor([0, 5, -1])
    uniforms = sampling.philox_uniforms(seeds, torch.tensor([0, 0, 2**40]), 1001)
    assert uniforms.shape == (3, 1001) and uniforms.dtype == torch.float32
    assert uniforms.min() > 0 and uniforms.max() < 1
    assert abs(uniforms.mean().item() - 0.5) < 0.02
    later = sampling.philox_uniforms(seeds, torch.tensor([1, 1, 2**40 + 1]), 1001)
    assert (uniforms != later).float().mean() > 0.99
    assert torch.equal(sampling.philox_uniforms(seeds[1:2], torch.tensor([0]), 1001), uniforms[1:2])


@pytest.mark.parametrize("temperature", [0.6, 1.0, 2.0])
def test_reference_draws_follow_the_softmax(temperature):
    num_draws = 20_000
    logits = PROBS.log().float().expand(num_draws, -1)
    steps = torch.arange(num_draws)
    tokens = sampling.reference_sample(
        logits, torch.full((num_draws,), temperature), torch.full((num_draws,), 7), steps
    )
    statistic = chi_square(tokens, softmax_probs(logits[0], temperature))
    assert statistic < CHI2_999[7], f"chi2 {statistic:.1f}"
    if temperature != 1.0:  # the check has power: these draws fail against temperature 1
        assert chi_square(tokens, softmax_probs(logits[0], 1.0)) > CHI2_999[7]


def test_reference_noise_is_exact_in_both_tails():
    """q = -log1p(-v) keeps its relative precision for tiny v (the series, up to 1/4) and
    large v."""
    v = torch.tensor([2.0**-33, 1e-6, 0.01, 2.0**-6, 0.2, 0.2499999, 0.25, 0.5, 1 - 2.0**-24])
    noise = sampling.uniform_to_noise(v).double()
    expected = -torch.log(-torch.log1p(-v.double()))
    assert torch.allclose(noise, expected, rtol=2e-6, atol=1e-6), (noise, expected)


def test_choose_num_splits():
    config = sampling.SamplingConfig(target_programs=528)
    assert sampling.choose_num_splits(256, 151936, config, 132) == 3
    assert sampling.choose_num_splits(1024, 151936, config, 132) == 1
    assert sampling.choose_num_splits(1, 151936, config, 132) == 9  # >= 16384 columns each
    assert sampling.choose_num_splits(1, 4096, config, 132) == 1


@pytest.mark.parametrize("dtype,write_uniforms", [("*fp32", False), ("*bf16", True)])
@pytest.mark.parametrize("fast_log", [False, True])
def test_kernel_compiles_for_hopper(dtype, write_uniforms, fast_log):
    """Triton's compiler, not its interpreter, rejects some code (e.g. a global read in a
    kernel that is not a tl.constexpr instance): compile for sm_90 here, without a GPU.
    The GPU's kernel (FAST_LOG) takes both logs of every column's noise from lg2.approx,
    the accurate software log none of them."""
    pytest.importorskip("triton")
    from hopper_ptx import compile_for_hopper

    types = dict(
        logits_ptr=dtype, temperature_ptr="*fp32", seed_ptr="*i64", step_ptr="*i64",
        value_ptr="*fp32", index_ptr="*i64", uniform_ptr="*fp32", stride_row="i64",
    )  # fmt: skip
    constexprs = {"WRITE_UNIFORMS": write_uniforms, "LANE": 1024, "FAST_LOG": fast_log}
    compiled = compile_for_hopper(sampling._sample_kernel, types, constexprs, num_warps=8)
    ptx = compiled.asm["ptx"]
    approx_logs = ptx.count("lg2.approx")
    columns_per_thread = 4 * 1024 // (8 * 32)  # a tile's columns over 8 warps of 32 threads
    assert approx_logs == (2 * columns_per_thread if fast_log else 0), approx_logs


@pytest.mark.skipif(CUDA, reason="the compiled kernel is tested on the GPU below")
def test_kernel_under_interpreter():
    from test_triton_interpreted import run_interpreted_cases

    run_interpreted_cases(Path(__file__).with_name("sampling_cases.py"))


# ---- GPU -----------------------------------------------------------------------------------

requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def real_batch(num_rows=256, vocab_size=151936, dtype=torch.float32, seed=0):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    logits = (torch.randn(num_rows, vocab_size, device="cuda", generator=generator) * 3).to(dtype)
    temperature = torch.rand(num_rows, device="cuda", generator=generator) * 1.5 + 0.1
    temperature[::4] = 0.0  # every fourth row greedy
    seeds = torch.randint(-(2**63), 2**63 - 1, (num_rows,), device="cuda", generator=generator)
    steps = torch.randint(0, 5000, (num_rows,), device="cuda", generator=generator)
    return logits, temperature, seeds, steps


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_kernel_matches_reference_at_real_size(dtype):
    logits, temperature, seeds, steps = real_batch(dtype=dtype)
    uniforms = torch.full(logits.shape, float("nan"), device="cuda")
    tokens = sampling.sample(logits, temperature, seeds, steps, uniforms=uniforms)
    random_rows = temperature > 0
    expected_uniforms = sampling.philox_uniforms(seeds, steps, logits.shape[1])
    assert torch.equal(uniforms[random_rows], expected_uniforms[random_rows])
    assert uniforms[~random_rows].isnan().all(), "greedy rows drew noise"
    check_tokens(tokens, logits, temperature, expected_uniforms)
    greedy = logits[~random_rows].float().argmax(dim=-1)
    assert torch.equal(tokens[~random_rows], greedy)
    assert torch.equal(sampling.sample(logits, temperature, seeds, steps), tokens)


@pytest.mark.gpu
@requires_cuda
def test_splits_and_tiles_do_not_change_the_draw():
    logits, temperature, seeds, steps = real_batch(num_rows=6)
    tokens = sampling.sample(logits, temperature, seeds, steps)  # split automatically
    for config, num_splits in [
        (sampling.DEFAULT_CONFIG, 1),
        (sampling.SamplingConfig(num_warps=4), 5),
        (sampling.SamplingConfig(num_warps=16), 64),
    ]:
        again = sampling.sample(logits, temperature, seeds, steps, config, num_splits)
        assert torch.equal(again, tokens), (config, num_splits)


@pytest.mark.gpu
@requires_cuda
def test_no_host_sync():
    logits, temperature, seeds, steps = real_batch(num_rows=64, dtype=torch.bfloat16)
    sampling.sample(logits, temperature, seeds, steps)  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sampling.sample(logits, temperature, seeds, steps)
        sampling.sample(logits[:2], temperature[:2], seeds[:2], steps[:2])  # split rows
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("temperature", [0.8, 1.7])
def test_full_vocabulary_draws_follow_the_softmax(temperature):
    """8 live tokens spread over a 151936-wide row (other tiles and splits), the rest
    at -40 (mass below 1e-12): 4096 draws, one seed, successive steps."""
    num_rows, vocab_size = 4096, 151936
    columns = torch.tensor([5, 4099, 30000, 70001, 100003, 120000, 151000, 151935])
    row = torch.full((vocab_size,), -40.0)
    row[columns] = PROBS.log().float()
    logits = row.cuda().expand(num_rows, -1)
    tokens = sampling.sample(
        logits,
        torch.full((num_rows,), temperature, device="cuda"),
        torch.full((num_rows,), 12345, device="cuda"),
        torch.arange(num_rows, device="cuda"),
    ).cpu()
    assert torch.isin(tokens, columns).all()
    drawn = (tokens[:, None] == columns[None, :]).int().argmax(dim=1)
    statistic = chi_square(drawn, softmax_probs(PROBS.log(), temperature))
    assert statistic < CHI2_999[7], f"chi2 {statistic:.1f}"


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("fast_log", [False, True])
def test_compiled_noise_is_close_to_exact(fast_log):
    """The kernel's noise function, compiled, over uniforms from 2**-33 to 1 - 2**-24 (both
    tails, the series' edge at 1/4), against -log(-log1p(-v)) in float64: within 1e-6 of
    it relative to max(1, |noise|) and 6e-6 absolute (a few float32 ulp), the card's
    lg2.approx included (measured on an H200: 5.3e-7 and 3.5e-6)."""
    import triton
    import triton.language as tl

    @triton.jit
    def noise_kernel(v_ptr, out_ptr, n, FAST_LOG: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        v = tl.load(v_ptr + offsets, mask=mask, other=0.5)
        tl.store(out_ptr + offsets, sampling._uniform_to_noise(v, FAST_LOG), mask=mask)

    exponents = torch.linspace(-33, -1e-7, 200_000, dtype=torch.float64)
    v = torch.cat([2.0**exponents, torch.linspace(0.2, 0.3, 100_001, dtype=torch.float64)])
    v = torch.cat([v, 1 - v]).float().clamp(2.0**-33, 1 - 2.0**-24).cuda()
    noise = torch.empty_like(v)
    noise_kernel[(triton.cdiv(len(v), 1024),)](v, noise, len(v), FAST_LOG=fast_log, BLOCK=1024)
    exact = -torch.log(-torch.log1p(-v.double()))
    error = (noise.double() - exact).abs()
    assert float(error.max()) < 6e-6, float(error.max())
    assert float((error / exact.abs().clamp_min(1.0)).max()) < 1e-6
