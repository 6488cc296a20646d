"""Where the PDL wait sits in the compiled kernels (sm_90 PTX, no GPU needed).

Under programmatic dependent launch a kernel may load what no kernel of the step writes
before `griddepcontrol.wait` (kernels/pdl.py): the rotary pass its position, cos/sin and
cache slot, decode attention its sequence length and query start. That takes their load
latency off the chain of dependent kernels a batch-1 decode step is. Everything else, and
every store, must come after the wait; the GPU tests (test_pdl_gpu.py, test_triton_gpu.py)
check the results.
"""

import pytest

pytest.importorskip("triton")

from hopper_ptx import compile_for_hopper  # noqa: E402

from lodger.kernels import decode_attention, rotary  # noqa: E402

WAIT = "griddepcontrol.wait"


def split_at_wait(ptx: str) -> tuple[str, str]:
    assert ptx.count(WAIT) == 1, f"expected one {WAIT}, found {ptx.count(WAIT)}"
    before, after = ptx.split(WAIT)
    return before, after


def global_loads(ptx: str) -> int:
    return ptx.count("ld.global")


@pytest.mark.parametrize("write_kv", [True, False])
def test_rotary_loads_its_inputs_before_the_wait(write_kv):
    types = dict(
        q_ptr="*bf16", k_ptr="*bf16", positions_ptr="*i64", cache_ptr="*fp32",
        q_weight_ptr="*bf16", k_weight_ptr="*bf16", v_ptr="*bf16", k_cache_ptr="*bf16",
        v_cache_ptr="*bf16", slot_ptr="*i64", eps="fp32", stride_qt="i64", stride_kt="i64",
        stride_vt="i64", stride_cache_block="i64",
    )  # fmt: skip
    constexprs = dict(
        Q_HEADS_PAD=16, KV_HEADS_PAD=8, HALF=64, HALF_PAD=64, NORM=True, WRITE_KV=write_kv,
        NUM_KV_HEADS=8, HEAD_DIM=128, BLOCK_SIZE=16, DIM_PAD=128, USE_PDL=True,
    )  # fmt: skip
    compiled = compile_for_hopper(rotary._rotary_kernel, types, constexprs, launch_pdl=True)
    before, after = split_at_wait(compiled.asm["ptx"])
    # position, cos, sin (+ the cache slot; cos and sin may take more than one load each);
    # q, k (and v) only after
    assert global_loads(before) >= (4 if write_kv else 3)
    assert "st.global" not in before and global_loads(after) >= 2


def test_decode_attention_loads_its_metadata_before_the_wait():
    types = dict(
        q_ptr="*bf16", k_cache_ptr="*bf16", v_cache_ptr="*bf16", block_tables_ptr="*i32",
        seq_lens_ptr="*i32", query_start_ptr="*i32", out_ptr="*bf16", partial_ptr="*fp32",
        lse_ptr="*fp32", scale_log2="fp32", stride_cache_block="i64", stride_qt="i64",
        stride_ot="i64",
    )  # fmt: skip
    constexprs = dict(
        GROUP=2, GROUP_PAD=16, HEAD_DIM=128, DIM_PAD=128, BLOCK_SIZE=16, BLOCK_N=128,
        SINGLE_SPLIT=False, NUM_Q_HEADS=16, NUM_KV_HEADS=8, DOT_PRECISION="tf32", USE_PDL=True,
    )  # fmt: skip
    compiled = compile_for_hopper(
        decode_attention._decode_split_kernel, types, constexprs, launch_pdl=True
    )
    before, after = split_at_wait(compiled.asm["ptx"])
    assert global_loads(before) == 2  # the sequence's length and its query's row
    assert "st.global" not in before and "st.global" in after


def test_fused_add_norm_sums_partials_after_the_wait():
    """The fused add + RMSNorm over a split K's partials: its weights (norm, bias) load
    before the wait, the partials the matmul before it wrote and the residual after."""
    from lodger.kernels import rms_norm

    types = dict(
        x_ptr="*fp32", residual_ptr="*bf16", weight_ptr="*bf16", out_ptr="*bf16",
        sum_ptr="*bf16", bias_ptr="*bf16", stride_x="i64", stride_x_split="i64",
        stride_residual="i64", stride_out="i64", stride_sum="i64", hidden_size="i32", eps="fp32",
    )  # fmt: skip
    loads_before = {}
    for has_bias in (False, True):
        constexprs = dict(
            ADD_RESIDUAL=True, X_SPLITS=4, HAS_BIAS=has_bias, BLOCK=1024, USE_PDL=True
        )  # fmt: skip
        kernel = rms_norm._rms_norm_kernel
        compiled = compile_for_hopper(kernel, types, constexprs, launch_pdl=True)
        before, after = split_at_wait(compiled.asm["ptx"])
        loads_before[has_bias] = global_loads(before)
        assert "st.global" not in before
        # each of the 4 partials and the residual: as many loads as the norm weight
        assert global_loads(after) == (4 + 1) * loads_before[False]
    assert loads_before[True] == 2 * loads_before[False] > 0  # the norm weight, the bias
