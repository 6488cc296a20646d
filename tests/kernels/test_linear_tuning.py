"""The matmul tuner's bookkeeping on the CPU: which configurations it would time and how a
recorded choice is looked up by batch size (the timing itself needs CUDA: see
test_triton_gpu.py)."""

import pytest

pytest.importorskip("triton")

from lodger.kernels.linear import LinearConfig  # noqa: E402
from lodger.kernels.linear_tuning import MAX_TUNED_ROWS, ShapeChoice, candidates  # noqa: E402


def test_candidates_by_batch_size():
    assert candidates(MAX_TUNED_ROWS + 1, 4096, 4096) == []
    one_row = candidates(1, 4096, 4096)
    assert any(c.kind == "gemv" for c in one_row) and any(c.kind == "dot" for c in one_row)
    assert all(c.kind == "dot" for c in candidates(3, 4096, 4096))
    for num_rows in (3, 16, 33, 64):
        for config in candidates(num_rows, 1024, 2048):
            assert config.block_m >= min(num_rows, 64) or config.block_m == 16
            assert config.block_m <= 64
    # a split K only where the output tiles alone would leave SMs idle
    assert all(c.split_k == 1 for c in candidates(64, 28672, 4096))
    assert any(c.split_k > 1 for c in candidates(8, 1024, 2048))
    # above 64 rows (the decode graphs of 128 and 256 sequences): 128-row tiles too
    assert MAX_TUNED_ROWS == 256
    wide = candidates(256, 4096, 1024)
    assert wide and all(c.kind == "dot" for c in wide)
    assert {c.block_m for c in wide} == {64, 128}
    assert all(c.num_warps == 8 for c in wide if c.block_m == 128)
    # above MAX_TUNED_ROWS only when asked (bench.linear --max-rows)
    assert candidates(512, 4096, 1024) == [] != candidates(512, 4096, 1024, max_rows=512)


def test_shape_choice_lookup_takes_the_smallest_tuned_size_at_least_m():
    gemv = LinearConfig(kind="gemv", block_n=8, block_k=512)
    dot = LinearConfig(block_m=16, block_n=64, block_k=128)
    choice = ShapeChoice()
    choice.add(8, dot)
    choice.add(1, gemv)
    choice.add(64, None)
    assert choice.batch_sizes == [1, 8, 64]
    assert choice.lookup(1) is gemv
    assert choice.lookup(2) is dot and choice.lookup(8) is dot
    assert choice.lookup(9) is None and choice.lookup(64) is None
    assert choice.lookup(65) is None  # above every tuned size: cuBLAS
    choice.add(8, None)  # re-tuning replaces
    assert choice.lookup(5) is None and len(choice.batch_sizes) == 3


def test_config_rejects_what_the_kernels_cannot_launch():
    with pytest.raises(AssertionError, match="power of two"):
        LinearConfig(block_n=48)
    with pytest.raises(AssertionError, match="block_m >= 16"):
        LinearConfig(kind="dot", block_m=8)
    with pytest.raises(AssertionError, match="kind"):
        LinearConfig(kind="mma")
