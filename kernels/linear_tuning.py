"""Per-shape choice between cuBLAS and lodger's skinny matmul (lodger.kernels.linear).

At start-up on CUDA the model runner times, for each weight shape of the model and each
decode batch size it will capture, cuBLAS (F.linear) and a few launch configurations of the
Triton kernel, the way the step runs them: one CUDA graph of calls over the model's own
weights of that shape, one after another, so no weight is served from L2 that would not
be in a real step. The fastest wins; the Triton kernel must beat cuBLAS by MIN_GAIN, or
cuBLAS stays. `linear()` then dispatches by (device, dtype, N, K) and the smallest tuned
batch size >= M; an untuned shape or a larger M (prefill) goes to cuBLAS. A split K is
timed with its sum kernel, although the model's o and down projections hand their partials
to the next norm unsummed (unreduced=True), so the choice errs towards cuBLAS. The engine tunes
with EngineConfig.tune_matmuls (on by default); the choices are kept between runs in a file
(lodger.kernels.tuning_cache), so a restart on the same card times nothing.
"""

from __future__ import annotations

import bisect
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from lodger.kernels.activation import silu_and_mul
from lodger.kernels.linear import LinearConfig, SplitKPartials, linear_unreduced
from lodger.kernels.linear import linear as triton_linear
from lodger.kernels.reference import relative_error
from lodger.kernels.tuning_cache import CachedChoice, TuningCache, case_key, device_key

logger = logging.getLogger(__name__)

MIN_GAIN = 0.03  # the Triton kernel must be this much faster than cuBLAS to be chosen
# a candidate whose result is further than this from cuBLAS's is never chosen
MAX_RELATIVE_ERROR = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
NUM_SMS_HINT = 132  # split K is tried only where fewer output tiles than an H100's SMs
SHARED_MEMORY_BYTES = 220 * 1024  # an H100 block may have 227 KiB; pipelined tiles must fit
# the largest decode graph of the default max_num_seqs: at 128 and 256 rows the tuner picks
# 128-row tiles for qwen3-0.6b's o and down projections, and nano gained 1-2% end to end
# (docs/benchmarks.md, 2026-11-28); larger batches keep cuBLAS untimed
MAX_TUNED_ROWS = 256


def candidates(
    num_rows: int, num_cols: int, depth: int, max_rows: int = MAX_TUNED_ROWS
) -> list[LinearConfig]:
    """Launch configurations worth timing for out [num_rows, num_cols], depth K (none
    above max_rows). From the H100 sweep (`python -m bench.linear`): the GEMV with few
    rows per program and long K chunks won at one or two rows; between, the tl.dot kernel
    with one M tile and a split K where there are few output tiles. Above 64 rows,
    128-row tiles on 8 warps too."""
    if num_rows > max_rows:
        return []
    found: list[LinearConfig] = []
    if num_rows <= 2:
        found += [
            LinearConfig(kind="gemv", block_n=block_n, block_k=block_k, num_stages=stages)
            for block_n in (2, 4, 8, 16)
            for block_k in (512, 1024)
            for stages in (2, 4)
        ]
    block_ms = [min(64, max(16, triton.next_power_of_2(num_rows)))]
    if num_rows > 64:
        block_ms.append(128)
    for block_m in block_ms:
        for block_n in (32, 64, 128):
            for block_k, stages in ((128, 4), (256, 3)):
                tiles = triton.cdiv(num_rows, block_m) * triton.cdiv(num_cols, block_n)
                staged_bytes = stages * (block_m + block_n) * block_k * 2  # x and w tiles
                if staged_bytes > SHARED_MEMORY_BYTES:
                    continue
                for split_k in (1, 2, 4):
                    if split_k > 1 and (tiles >= NUM_SMS_HINT or depth // split_k < block_k):
                        continue
                    found.append(
                        LinearConfig(
                            block_m=block_m,
                            block_n=block_n,
                            block_k=block_k,
                            split_k=split_k,
                            num_warps=8 if block_m == 128 else 4,
                            num_stages=stages,
                        )
                    )
    return found


def time_graph(calls: Sequence[Callable[[], object]], replays: int = 5) -> float:
    """Seconds per call: the calls captured once into a CUDA graph, replayed `replays` times
    (median), after one eager pass that compiles whatever they launch."""
    for call in calls:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del graph
    return statistics.median(times) / len(calls)


def time_config(x: Tensor, weights: Sequence[Tensor], config: LinearConfig | None) -> float:
    """Seconds per matmul of x by each of `weights` in turn; config None = cuBLAS."""
    if config is None:
        return time_graph([lambda w=w: F.linear(x, w) for w in weights])
    return time_graph([lambda w=w: triton_linear(x, w, None, config) for w in weights])


@dataclass
class ShapeChoice:
    """Tuned batch sizes of one weight shape and what each one runs (None = cuBLAS)."""

    batch_sizes: list[int] = field(default_factory=list)
    configs: list[LinearConfig | None] = field(default_factory=list)

    def add(self, batch_size: int, config: LinearConfig | None) -> None:
        index = bisect.bisect_left(self.batch_sizes, batch_size)
        if index < len(self.batch_sizes) and self.batch_sizes[index] == batch_size:
            self.configs[index] = config
        else:
            self.batch_sizes.insert(index, batch_size)
            self.configs.insert(index, config)

    def lookup(self, num_rows: int) -> LinearConfig | None:
        index = bisect.bisect_left(self.batch_sizes, num_rows)
        return self.configs[index] if index < len(self.configs) else None


_CHOICES: dict[tuple, ShapeChoice] = {}


def _key(weight: Tensor) -> tuple:
    return (weight.device, weight.dtype, weight.shape[0], weight.shape[1])


def _chosen(x: Tensor, weight: Tensor) -> LinearConfig | None:
    """What tuning chose for x's batch size against this weight (None: cuBLAS)."""
    choice = _CHOICES.get(_key(weight))
    if choice is None or x.stride(1) != 1:
        return None
    return choice.lookup(x.shape[0])


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, unreduced: bool = False
) -> Tensor | SplitKPartials:
    """x @ weight.T (+ bias) by whatever tuning chose for this shape and batch size.
    unreduced: where that is a split K, its partials unsummed (linear_unreduced)."""
    config = _chosen(x, weight)
    if config is None:
        return F.linear(x, weight, bias)
    if unreduced:
        return linear_unreduced(x, weight, bias, config)
    return triton_linear(x, weight, bias, config)


def silu_and_mul_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, unreduced: bool = False
) -> Tensor | SplitKPartials:
    """linear(silu_and_mul(x), weight, bias, unreduced) for packed [gate | up] rows x;
    where tuning chose the GEMV, the GEMV computes silu(gate) * up as it loads x (one
    launch, same rounding), else silu_and_mul's kernel runs first."""
    config = _chosen(x, weight)
    if config is not None and config.kind == "gemv":
        return triton_linear(x, weight, bias, config, gated=True)
    return linear(silu_and_mul(x), weight, bias, unreduced)


@dataclass
class TuneResult:
    """What tuning chose for one (shape, batch size), with its timings in microseconds."""

    num_cols: int
    depth: int
    batch_size: int
    cublas_us: float
    best_us: float
    config: LinearConfig | None
    cached: bool = False  # read from the tuning cache, not timed in this process

    def summary(self) -> str:
        """e.g. 'N=4096 K=4096 M=1: gemv n8 k512 s2 14.2 us (cuBLAS 16.3 us)'."""
        config = self.config
        if config is None:
            chosen = "cuBLAS"
        elif config.kind == "gemv":
            chosen = f"gemv n{config.block_n} k{config.block_k} s{config.num_stages}"
        else:
            chosen = (
                f"dot m{config.block_m} n{config.block_n} k{config.block_k} "
                f"split{config.split_k} s{config.num_stages}"
            )
        return (
            f"N={self.num_cols} K={self.depth} M={self.batch_size}: {chosen} "
            f"{self.best_us:.1f} us (cuBLAS {self.cublas_us:.1f} us)"
            f"{' cached' if self.cached else ''}"
        )


@dataclass
class CandidateTimes:
    """cuBLAS and the candidates timed on one x over a list of same-shape weights."""

    cublas_s: float  # seconds per matmul
    timed: list[tuple[float, LinearConfig]]  # (seconds, config) of those that match cuBLAS
    wrong: list[tuple[LinearConfig, float]]  # (config, relative error) of those that do not


def time_candidates(
    x: Tensor, weights: Sequence[Tensor], configs: Sequence[LinearConfig]
) -> CandidateTimes:
    """Time cuBLAS and each config (time_config) and check each config's output against
    cuBLAS's (MAX_RELATIVE_ERROR); a config that fails to compile or launch is skipped."""
    num_cols, depth = weights[0].shape
    cublas = time_config(x, weights, None)
    expected = F.linear(x, weights[0]).float()
    times = CandidateTimes(cublas, [], [])
    for config in configs:
        try:
            seconds = time_config(x, weights, config)
            got = triton_linear(x, weights[0], None, config).float()
        except Exception as error:  # noqa: BLE001 - a launch this card cannot run is skipped
            logger.warning("matmul %s failed at N=%d K=%d: %s", config, num_cols, depth, error)
            continue
        off = relative_error(got, expected)
        if not off <= MAX_RELATIVE_ERROR[x.dtype]:  # NaN too
            logger.warning(
                "matmul %s at N=%d K=%d M=%d is off cuBLAS by %.2e; skipped",
                config,
                num_cols,
                depth,
                x.shape[0],
                off,
            )
            times.wrong.append((config, off))
            continue
        times.timed.append((seconds, config))
    return times


def tune_weights(
    weights: Sequence[Tensor], batch_sizes: Sequence[int],
    make_candidates: Callable[[int, int, int], list[LinearConfig]] = candidates,
) -> list[TuneResult]:  # fmt: skip
    """Time cuBLAS and the candidates over `weights` (all of one shape) at each batch size,
    record the winners for `linear()` and return what was chosen."""
    assert weights and all(w.shape == weights[0].shape for w in weights)
    num_cols, depth = weights[0].shape
    choice = _CHOICES.setdefault(_key(weights[0]), ShapeChoice())
    results = []
    for batch_size in sorted(set(batch_sizes)):
        x = torch.randn(batch_size, depth, dtype=weights[0].dtype, device=weights[0].device)
        times = time_candidates(x, weights, make_candidates(batch_size, num_cols, depth))
        cublas = times.cublas_s
        best, best_config = cublas, None
        for seconds, config in times.timed:
            if seconds < best and seconds < cublas * (1 - MIN_GAIN):
                best, best_config = seconds, config
        choice.add(batch_size, best_config)
        results.append(
            TuneResult(num_cols, depth, batch_size, cublas * 1e6, best * 1e6, best_config)
        )
    return results


def tune_model_linears(
    model: torch.nn.Module, batch_sizes: Sequence[int], cache: TuningCache | None = None
) -> list[TuneResult]:
    """Tune every weight shape of the model's nn.Linear layers at the given batch sizes
    (those this process has not tuned yet), taking what `cache` (default: the tuning cache
    file's group for the weights' device) already holds and adding what was timed to it."""
    start = time.perf_counter()
    by_shape: dict[tuple, list[Tensor]] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.is_cuda:
            by_shape.setdefault(_key(module.weight), []).append(module.weight)
    results = []
    if by_shape:
        if cache is None:
            cache = TuningCache(device_key(next(iter(by_shape))[0]))
        results = tune_shapes(by_shape, batch_sizes, cache)
    chosen = sum(r.config is not None for r in results)
    logger.info(
        "tuned %d (matmul shape, batch size) cases in %.1f s (%d from the tuning cache): "
        "Triton for %d, cuBLAS for %d",
        len(results),
        time.perf_counter() - start,
        sum(r.cached for r in results),
        chosen,
        len(results) - chosen,
    )
    return results


def build_kernel(weight: Tensor, batch_size: int, config: LinearConfig) -> None:
    """Launch `config` once on zeros, which builds its Triton kernel in this process."""
    x = torch.zeros(batch_size, weight.shape[1], dtype=weight.dtype, device=weight.device)
    triton_linear(x, weight, None, config)


def tune_shapes(
    by_shape: dict[tuple, list[Tensor]], batch_sizes: Sequence[int], cache: TuningCache
) -> list[TuneResult]:
    """tune_model_linears for weights grouped by _key: cached cases are recorded as they
    are (and their Triton kernel launched once, which builds it: the LM head runs outside
    the CUDA graphs, and a build there would stall a step), the others timed (tune_weights)
    and saved to the cache."""
    results = []
    for key, weights in by_shape.items():
        _, dtype, num_cols, depth = key
        known = _CHOICES.get(key)
        wanted = [b for b in batch_sizes if known is None or b not in known.batch_sizes]
        to_time = []
        for batch_size in sorted(set(wanted)):
            hit = cache.get(case_key(dtype, num_cols, depth, batch_size))
            if hit is None:
                to_time.append(batch_size)
                continue
            _CHOICES.setdefault(key, ShapeChoice()).add(batch_size, hit.config)
            if hit.config is not None:
                build_kernel(weights[0], batch_size, hit.config)
            results.append(
                TuneResult(num_cols, depth, batch_size, hit.cublas_us, hit.best_us, hit.config,
                           cached=True)
            )  # fmt: skip
        if not to_time:  # all cached, or another engine in this process tuned this shape
            continue
        try:
            timed = tune_weights(weights, to_time)
        except Exception:  # noqa: BLE001 - tuning must never stop the engine from starting
            logger.exception("matmul tuning failed for N=%d K=%d; cuBLAS keeps it", *key[2:])
            _CHOICES.pop(key, None)
            continue
        results += timed
        cache.save({
            case_key(dtype, num_cols, depth, r.batch_size): CachedChoice(
                r.config, r.cublas_us, r.best_us
            )
            for r in timed
        })  # fmt: skip
    return results


def clear() -> None:
    """Forget every choice (tests)."""
    _CHOICES.clear()
