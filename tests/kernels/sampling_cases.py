"""The fused sampling kernel under the Triton interpreter (CPU), against its torch reference.

Not collected by itself: test_sampling.py runs this file through test_triton_interpreted's
runner (a fresh Python with TRITON_INTERPRET=1). The interpreter runs one program at a
time, about 25 ms per tile, so the batches are small and the tiles narrow.
"""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run through test_sampling.py", allow_module_level=True)

from test_sampling import CHI2_999, PROBS, check_tokens, chi_square, softmax_probs

from lodger.kernels.sampling import SamplingConfig, philox_uniforms, sample

NARROW = SamplingConfig(lane_width=64, num_warps=4)  # tiles of 256 columns
VOCAB = 1003  # 4 tiles, the last one partial, its last lane too


def batch(dtype=torch.float32):
    """8 rows: greedy rows with a tie and with -inf columns, random rows at several
    temperatures, one filtered down to three tokens; seeds and steps over their ranges."""
    logits = (torch.randn(8, VOCAB) * 2).to(dtype)
    logits[1, 17] = logits[1, 900] = logits[1].max() + 1  # greedy tie: the lowest id wins
    logits[3, :500] = -torch.inf
    logits[6] = -torch.inf
    logits[6, [2, 511, 1002]] = torch.tensor([0.5, 0.1, 0.4]).to(dtype)
    temperature = torch.tensor([0.7, 0.0, 1.0, 0.0, 2.5, 0.3, 1.0, 1e-5])
    seeds = torch.tensor([0, 1, -1, 2**62, -(2**63), 2**63 - 1, 12345, 99])
    steps = torch.tensor([0, 0, 1, 7, 2**32 + 3, 100, 5, 2**31])
    return logits, temperature, seeds, steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_uniforms_and_tokens_match_reference(dtype):
    logits, temperature, seeds, steps = batch(dtype)
    uniforms = torch.full(logits.shape, float("nan"))
    tokens = sample(logits, temperature, seeds, steps, NARROW, num_splits=1, uniforms=uniforms)
    random_rows = temperature > 0
    expected = philox_uniforms(seeds, steps, VOCAB, NARROW.lane_width)
    assert torch.equal(uniforms[random_rows], expected[random_rows])
    assert uniforms[~random_rows].isnan().all(), "greedy rows drew noise"
    check_tokens(tokens, logits, temperature, expected)
    assert tokens[1] == 17 and tokens[3] == logits[3].float().argmax()
    assert tokens[6] in (2, 511, 1002)


def test_splits_give_the_same_tokens():
    logits, temperature, seeds, steps = batch()
    logits, temperature, seeds, steps = logits[:4, :500], temperature[:4], seeds[:4], steps[:4]
    config = SamplingConfig(lane_width=16, num_warps=4)  # tiles of 64 columns
    one = sample(logits, temperature, seeds, steps, config, num_splits=1)
    assert torch.equal(sample(logits, temperature, seeds, steps, config, num_splits=3), one)
    assert torch.equal(sample(logits, temperature, seeds, steps, config, num_splits=8), one)
    one_warp = SamplingConfig(lane_width=16, num_warps=1)
    assert torch.equal(sample(logits, temperature, seeds, steps, one_warp, num_splits=2), one)


def test_seeded_row_draws_the_same_whatever_its_row():
    """A row's draw depends on its (seed, step) and logits only, not on the rows around it."""
    vocab = 300
    row = torch.randn(vocab)
    others = torch.randn(3, vocab)
    config = SamplingConfig(lane_width=32, num_warps=4)

    def draw(logits, temperature, seeds, steps):
        return sample(logits, torch.tensor(temperature), torch.tensor(seeds),
                      torch.tensor(steps), config)  # fmt: skip

    alone = draw(row[None], [0.9], [42], [3])
    among = draw(torch.stack([others[0], row, others[1]]), [1.0, 0.9, 0.0], [7, 42, 8], [3, 3, 0])
    last = draw(torch.cat([others, row[None]]), [0.5, 0.5, 0.5, 0.9], [1, 2, 3, 42], [0, 9, 3, 3])
    assert alone[0] == among[1] == last[3]
    steps = draw(row[None].expand(12, -1), [0.9] * 12, [42] * 12, list(range(12)))
    assert len(set(steps.tolist())) > 3, "successive steps must draw fresh noise"


def test_temperature_draws_follow_the_softmax():
    """160 draws at temperature 2 of logits 2 * log(PROBS) (one row each, seeds and steps
    varying): the chi-square passes against PROBS and fails if the temperature is ignored."""
    num_draws = 160
    logits = (2 * PROBS.log()).float().expand(num_draws, -1).contiguous()
    tokens = sample(
        logits, torch.full((num_draws,), 2.0), torch.arange(num_draws) * 7919,
        torch.arange(num_draws) % 17, SamplingConfig(lane_width=2, num_warps=1),
    )  # fmt: skip
    assert chi_square(tokens, softmax_probs(logits[0], 2.0)) < CHI2_999[7]
    assert chi_square(tokens, softmax_probs(logits[0], 1.0)) > CHI2_999[7]
