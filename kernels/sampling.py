"""Triton sampling: one pass over each row of logits draws argmax(logit / T - log q), q ~ Exp(1).

That is the exponential trick (argmax(p / q) samples from p exactly) taken in log space, so
no softmax, max or normaliser is needed and one read of the logits suffices. Rows with
temperature 0 take the plain argmax (lowest id on ties, like torch).

The noise is a fixed function of (seed, step, column), so a row's draw never depends on its
batch position, its neighbours, the number of programs or warps. Columns come in tiles of
4 * W (W = SamplingConfig.lane_width, 1024 in the engine); one Philox call gives the 4
words of the same position j in the tile's 4 lanes of W columns. For column c:

    tile, lane, j = c // (4 * W), (c // W) % 4, c % W
    r = Philox4x32-10(key=seed as two 32-bit words, counter=(tile * W + j, step, 0, 0))[lane]
    v = min(float32(r) * 2**-32 + 2**-33, 1 - 2**-24)         # uniform in (0, 1)
    q = -log1p(-v)                                              # Exp(1), precise near 0
    noise = -log(q)

-log1p(-v) is its series below v = 1/4 (ten terms, within 1e-7 of it), else -log(1 - v).
On the GPU both logs are the card's approximate log2 instruction (`lg2.approx`, a few ulp
off, where the accurate software log costs ~40 instructions: with Philox it made the kernel
compute-bound at ~120 instructions a column); the series keeps 1 - v away from 1, where
that instruction's absolute error would be a large relative one. So the noise is within
a few float32 ulp of the accurate log's (at most ~5e-6 where it is largest, near 23), and a
draw can change only between scores that close; the CPU interpreter, which has no such
instruction, takes the accurate log.

Philox is Triton's (tl.philox); `philox_uniforms` below computes the same v bit for bit in
torch, and `reference_sample` is the torch reference of the whole draw. The engine passes a
request's seed (its own, or one drawn for it when first seen) and its number of output
tokens as the step. Work is split over (row, column split) programs when the batch is too
small to fill the GPU; a second tiny kernel then picks each row's best split.
"""

import os
from dataclasses import dataclass
from functools import cache

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from lodger.kernels.pdl import await_prior_kernel, launch_options

# Globals a kernel reads must be tl.constexpr instances (an annotation is not enough).
_TWO_POW_M32 = tl.constexpr(2.0**-32)
_TWO_POW_M33 = tl.constexpr(2.0**-33)
_ONE_MINUS_ULP = tl.constexpr(1.0 - 2.0**-24)  # the largest float32 below 1
_SERIES_BELOW = tl.constexpr(0.25)  # log1p by its series below this (1 - v is coarse)
_SERIES_TERMS = tl.constexpr(10)  # to v**10 / 10: within 1e-7 of it up to _SERIES_BELOW
_LN2 = tl.constexpr(0.6931471805599453)
_INT32_MAX = tl.constexpr(2**31 - 1)

# Philox4x32 constants (Triton's, the Random123 ones), for the torch reference.
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_NUM_ROUNDS = 10
_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    # Columns per lane; a tile is 4 lanes. Part of the random stream's definition: the
    # engine always uses 1024 (tests shrink it to keep the interpreter fast).
    lane_width: int = 1024
    num_warps: int = 8
    target_programs: int = 0  # split rows until this many programs run; 0: 4 per SM
    min_split_columns: int = 16384  # never split a row into pieces shorter than this

    def __post_init__(self) -> None:
        width = self.lane_width
        assert width >= 1 and width & (width - 1) == 0, f"lane_width {width}: a power of two"

    @property
    def tile(self) -> int:
        return 4 * self.lane_width


DEFAULT_CONFIG = SamplingConfig()


@triton.jit
def _log(x, FAST_LOG: tl.constexpr):
    """Natural log of positive normal x: FAST_LOG, the card's lg2.approx instruction."""
    if FAST_LOG:
        return libdevice.fast_log2f(x) * _LN2
    return tl.log(x)


@triton.jit
def _uniform_to_noise(v, FAST_LOG: tl.constexpr):
    """-log(q) for q = -log1p(-v) ~ Exp(1): the Gumbel noise of uniform v in (0, 1)."""
    # the series of -log1p(-v) to v**_SERIES_TERMS / _SERIES_TERMS, by Horner
    series = 1.0 / _SERIES_TERMS
    for n in tl.static_range(_SERIES_TERMS - 1, 0, -1):
        series = 1.0 / n + v * series
    series = v * series
    q = tl.where(v < _SERIES_BELOW, series, -_log(1.0 - v, FAST_LOG))
    return -_log(q, FAST_LOG)


@triton.jit
def _scan_lane(
    best_value, best_index, row_ptr, uniform_ptr, cols, end, inv_temperature, r,
    RANDOM: tl.constexpr, WRITE_UNIFORMS: tl.constexpr, FAST_LOG: tl.constexpr,
):  # fmt: skip
    """Fold one lane of columns into the running (best score, its column) per position;
    columns only grow, so a strict > keeps the lowest column of equal scores."""
    mask = cols < end
    x = tl.load(row_ptr + cols, mask=mask, other=float("-inf")).to(tl.float32)
    if RANDOM:
        v = tl.minimum(r.to(tl.float32) * _TWO_POW_M32 + _TWO_POW_M33, _ONE_MINUS_ULP)
        if WRITE_UNIFORMS:
            tl.store(uniform_ptr + cols, v, mask=mask)
        score = x * inv_temperature + _uniform_to_noise(v, FAST_LOG)
    else:
        score = x
    better = score > best_value
    return tl.where(better, score, best_value), tl.where(better, cols, best_index)


@triton.jit
def _scan_columns(
    row_ptr, uniform_ptr, start, end, inv_temperature, seed, step,
    RANDOM: tl.constexpr, WRITE_UNIFORMS: tl.constexpr, LANE: tl.constexpr,
    FAST_LOG: tl.constexpr,
):  # fmt: skip
    """(best score, its column) over columns [start, end) of one row, lowest column on ties;
    start is a multiple of the tile (4 * LANE)."""
    positions = tl.arange(0, LANE)
    best_value = tl.full([LANE], float("-inf"), tl.float32)
    best_index = start + positions
    for base in range(start, end, 4 * LANE):
        if RANDOM:
            counter = (base // 4 + positions).to(tl.uint32)
            zero = counter * 0
            r0, r1, r2, r3 = tl.philox(seed, counter, zero + step, zero, zero)
        else:
            r0 = positions.to(tl.uint32)  # unused
            r1 = r0
            r2 = r0
            r3 = r0
        cols = base + positions
        best_value, best_index = _scan_lane(
            best_value, best_index, row_ptr, uniform_ptr, cols, end, inv_temperature, r0,
            RANDOM, WRITE_UNIFORMS, FAST_LOG,
        )  # fmt: skip
        best_value, best_index = _scan_lane(
            best_value, best_index, row_ptr, uniform_ptr, cols + LANE, end, inv_temperature, r1,
            RANDOM, WRITE_UNIFORMS, FAST_LOG,
        )  # fmt: skip
        best_value, best_index = _scan_lane(
            best_value, best_index, row_ptr, uniform_ptr, cols + 2 * LANE, end, inv_temperature,
            r2, RANDOM, WRITE_UNIFORMS, FAST_LOG,
        )  # fmt: skip
        best_value, best_index = _scan_lane(
            best_value, best_index, row_ptr, uniform_ptr, cols + 3 * LANE, end, inv_temperature,
            r3, RANDOM, WRITE_UNIFORMS, FAST_LOG,
        )  # fmt: skip
    value = tl.max(best_value, axis=0)
    index = tl.min(tl.where(best_value == value, best_index, _INT32_MAX), axis=0)
    return value, index


@triton.jit
def _sample_kernel(
    logits_ptr, temperature_ptr, seed_ptr, step_ptr, value_ptr, index_ptr, uniform_ptr,
    stride_row, stride_uniform, vocab_size, split_columns,
    WRITE_UNIFORMS: tl.constexpr, LANE: tl.constexpr, FAST_LOG: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    """Program (row, split): the best column of the split's columns, to value/index[row, split]."""
    await_prior_kernel(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    start = split * split_columns
    end = tl.minimum(start + split_columns, vocab_size)
    row_ptr = logits_ptr + row * stride_row
    uniform_row = uniform_ptr + row * stride_uniform
    temperature = tl.load(temperature_ptr + row)
    if temperature == 0.0:
        value, index = _scan_columns(
            row_ptr, uniform_row, start, end, 1.0, 0, 0,
            RANDOM=False, WRITE_UNIFORMS=False, LANE=LANE, FAST_LOG=FAST_LOG,
        )  # fmt: skip
    else:
        seed = tl.load(seed_ptr + row)
        step = tl.load(step_ptr + row).to(tl.uint32)
        value, index = _scan_columns(
            row_ptr, uniform_row, start, end, 1.0 / temperature, seed, step,
            RANDOM=True, WRITE_UNIFORMS=WRITE_UNIFORMS, LANE=LANE, FAST_LOG=FAST_LOG,
        )  # fmt: skip
    tl.store(value_ptr + row * num_splits + split, value)
    tl.store(index_ptr + row * num_splits + split, index.to(tl.int64))


# Most splits of a row. _best_split_kernel always reads MAX_SPLITS lanes (masked): one
# compiled variant for every batch size, where a power of two fitted to num_splits made
# Triton compile a new one, mid-serving, each time the batch size crossed into a new range.
MAX_SPLITS = 64


@triton.jit(do_not_specialize=["num_splits"])  # one variant whatever the split count
def _best_split_kernel(
    value_ptr, index_ptr, out_ptr, num_splits, SPLITS: tl.constexpr, USE_PDL: tl.constexpr
):
    """Program per row: the column of its best split (splits hold increasing columns)."""
    await_prior_kernel(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    splits = tl.arange(0, SPLITS)
    mask = splits < num_splits
    values = tl.load(value_ptr + row * num_splits + splits, mask=mask, other=float("-inf"))
    indices = tl.load(index_ptr + row * num_splits + splits, mask=mask, other=_INT32_MAX)
    best = tl.max(values, axis=0)
    tl.store(out_ptr + row, tl.min(tl.where(values == best, indices, _INT32_MAX), axis=0))


def has_fast_log(device: torch.device) -> bool:
    """Whether the kernel takes the card's approximate log2 (compiled for CUDA; the CPU
    interpreter has none)."""
    return device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"


@cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(num_rows: int, vocab_size: int, config: SamplingConfig, num_sms: int):
    """Splits per row so that about target_programs programs run, none shorter than
    min_split_columns; never more splits than the row has tiles."""
    target = config.target_programs or 4 * num_sms
    wanted = triton.cdiv(target, max(num_rows, 1))
    by_length = max(1, vocab_size // config.min_split_columns)
    return max(1, min(wanted, by_length, triton.cdiv(vocab_size, config.tile), MAX_SPLITS))


def _check(logits: Tensor, temperature: Tensor, seeds: Tensor, steps: Tensor) -> None:
    assert logits.dim() == 2 and logits.stride(1) == 1, (
        f"logits must be [N, V] with contiguous rows, got {tuple(logits.shape)} "
        f"strides {logits.stride()}"
    )
    assert logits.dtype in (torch.float32, torch.float16, torch.bfloat16), logits.dtype
    num_rows = logits.shape[0]
    for name, x, dtype in (
        ("temperature", temperature, torch.float32),
        ("seeds", seeds, torch.int64),
        ("steps", steps, torch.int64),
    ):
        assert x.shape == (num_rows,) and x.dtype == dtype and x.stride(0) == 1, (
            f"{name} must be [{num_rows}] {dtype}, got {tuple(x.shape)} {x.dtype}"
        )
        assert x.device == logits.device, f"{name} is on {x.device}, logits on {logits.device}"
    assert logits.shape[1] < 2**31, "vocabulary too large for int32 columns"


def sample(
    logits: Tensor,
    temperature: Tensor,
    seeds: Tensor,
    steps: Tensor,
    config: SamplingConfig = DEFAULT_CONFIG,
    num_splits: int | None = None,
    uniforms: Tensor | None = None,
) -> Tensor:
    """One token per row of logits [N, V] (float32/16, bf16) -> [N] int64, no host sync.

    temperature [N] float32 (0: greedy), seeds [N] int64 and steps [N] int64 (the Philox key
    and counter of each random row; ignored on greedy rows). `uniforms`, a float32 [N, V]
    tensor, receives the random rows' uniforms v (for tests; greedy rows are not written).
    """
    _check(logits, temperature, seeds, steps)
    num_rows, vocab_size = logits.shape
    out = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    if num_rows == 0:
        return out
    if uniforms is not None:
        assert uniforms.shape == logits.shape and uniforms.dtype == torch.float32
        assert uniforms.stride(1) == 1
    if num_splits is None:
        sms = _num_sms(logits.device.index or 0) if logits.is_cuda else 1
        num_splits = choose_num_splits(num_rows, vocab_size, config, sms)
    num_tiles = triton.cdiv(vocab_size, config.tile)
    tiles_per_split = triton.cdiv(num_tiles, num_splits)
    num_splits = triton.cdiv(num_tiles, tiles_per_split)  # no empty split
    assert num_splits <= MAX_SPLITS, f"num_splits {num_splits}: at most {MAX_SPLITS}"
    if num_splits == 1:
        values = torch.empty(num_rows, 1, dtype=torch.float32, device=logits.device)
        indices = out[:, None]
    else:
        values = torch.empty(num_rows, num_splits, dtype=torch.float32, device=logits.device)
        indices = torch.empty(num_rows, num_splits, dtype=torch.int64, device=logits.device)
    _sample_kernel[(num_rows, num_splits)](
        logits, temperature, seeds, steps, values, indices,
        uniforms if uniforms is not None else values,
        logits.stride(0), uniforms.stride(0) if uniforms is not None else 0,
        vocab_size, tiles_per_split * config.tile,
        WRITE_UNIFORMS=uniforms is not None, LANE=config.lane_width,
        FAST_LOG=has_fast_log(logits.device), num_warps=config.num_warps,
        **launch_options(logits.device),
    )  # fmt: skip
    if num_splits > 1:
        _best_split_kernel[(num_rows,)](
            values, indices, out, num_splits, SPLITS=MAX_SPLITS, **launch_options(logits.device)
        )
    return out


# ---- torch reference -----------------------------------------------------------------------


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(high, low) 32-bit words of the 64-bit product of constant a and uint32 values b
    (held in int64), from 16-bit halves so that nothing overflows int64."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    low_low = a_lo * b_lo
    middle = a_hi * b_lo + a_lo * b_hi + (low_low >> 16)
    return a_hi * b_hi + (middle >> 16), ((middle & 0xFFFF) << 16) | (low_low & 0xFFFF)


def philox4x32(seeds: Tensor, c0: Tensor, c1: Tensor, c2: int = 0, c3: int = 0) -> list[Tensor]:
    """Philox4x32-10 as Triton's tl.philox(seed, c0, c1, c2, c3), in int64 torch ops: seeds
    int64 (any 64-bit pattern, broadcastable), c0/c1 uint32 values held in int64 -> the 4
    uint32 words, in int64."""
    k0, k1 = seeds & _MASK32, (seeds >> 32) & _MASK32
    c0, c1 = torch.broadcast_tensors(c0 & _MASK32, c1 & _MASK32)
    c2, c3 = torch.full_like(c0, c2 & _MASK32), torch.full_like(c0, c3 & _MASK32)
    for _ in range(_NUM_ROUNDS):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return [c0, c1, c2, c3]


def philox_uniforms(seeds: Tensor, steps: Tensor, vocab_size: int, lane_width: int = 1024):
    """The kernel's uniforms v [N, V] float32 for seeds and steps [N] int64, bit for bit."""
    num_tiles = triton.cdiv(vocab_size, 4 * lane_width)
    width = min(lane_width, vocab_size)  # a vocabulary narrower than a lane uses lane 0 only
    positions = torch.arange(width, device=seeds.device)
    tile_starts = torch.arange(num_tiles, device=seeds.device) * lane_width
    counters = (tile_starts[:, None] + positions[None, :]).view(1, -1)
    words = philox4x32(seeds[:, None], counters, steps[:, None])  # 4 x [N, tiles * width]
    tiles = torch.stack([w.view(-1, num_tiles, width) for w in words], dim=2)
    r = tiles.reshape(len(seeds), num_tiles * 4 * width)[:, :vocab_size]
    v = r.to(torch.float32) * 2.0**-32 + 2.0**-33
    return v.clamp_max_(1.0 - 2.0**-24)


def uniform_to_noise(v: Tensor) -> Tensor:
    """-log(q), q = -log1p(-v): the kernel's noise in plain torch, with its series below
    1/4 and the accurate log (the GPU's approximate log is within a few ulp of it)."""
    terms = _SERIES_TERMS.value
    series = torch.full_like(v, 1.0 / terms)
    for n in range(terms - 1, 0, -1):
        series = 1.0 / n + v * series
    q = torch.where(v < _SERIES_BELOW.value, v * series, -torch.log(1.0 - v))
    return -torch.log(q)


def reference_scores(logits: Tensor, temperature: Tensor, uniforms: Tensor) -> Tensor:
    """The kernel's per-column scores: logit * (1 / T) + noise on random rows, the logit on
    greedy rows (T == 0); float32 [N, V]."""
    x = logits.float()
    greedy = (temperature == 0)[:, None]
    inv_temperature = torch.where(greedy, 1.0, 1.0 / temperature[:, None])
    return torch.where(greedy, x, x * inv_temperature + uniform_to_noise(uniforms))


def reference_sample(
    logits: Tensor, temperature: Tensor, seeds: Tensor, steps: Tensor, lane_width: int = 1024
) -> Tensor:
    """The torch reference of sample(): the same Philox stream, argmax of reference_scores."""
    uniforms = philox_uniforms(seeds, steps, logits.shape[1], lane_width)
    return reference_scores(logits, temperature, uniforms).argmax(dim=-1)
