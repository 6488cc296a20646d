"""A file that keeps the matmul tuner's choices between runs (lodger.kernels.linear_tuning).

Tuning times every candidate launch configuration of every weight shape at start-up, which
costs seconds to tens of seconds (more on a cold Triton cache). Its result depends only on
the card, the software and the kernel's source, so the choices are written to a JSON file
and read back on the next start: a restart of the same model on the same machine tunes
nothing. Entries are grouped under a device key (card name, compute capability, torch,
CUDA, Triton and a hash of the matmul kernel and tuner sources); a change of any of them
starts a new group. The file is `matmul_tuning.json` in `$LODGER_CACHE_DIR`, else
`$XDG_CACHE_HOME/lodger`, else `~/.cache/lodger`; `LODGER_CACHE_DIR=` (empty) turns the
cache off. A file that cannot be read or written is logged and ignored: it never stops the
engine from starting.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lodger.kernels.linear import LinearConfig

logger = logging.getLogger(__name__)

FILE_NAME = "matmul_tuning.json"
FORMAT_VERSION = 1
_SOURCES = ("linear.py", "linear_tuning.py")  # a change to either may change the choices


@dataclass(frozen=True)
class CachedChoice:
    """One tuned case as stored: the chosen config (None = cuBLAS) and its timings (µs)."""

    config: LinearConfig | None
    cublas_us: float
    best_us: float

    def to_json(self) -> dict:
        config = None if self.config is None else dataclasses.asdict(self.config)
        return {
            "config": config,
            "cublas_us": round(self.cublas_us, 2),
            "best_us": round(self.best_us, 2),
        }

    @classmethod
    def from_json(cls, value: dict) -> CachedChoice:
        config = value["config"]
        return cls(
            config=None if config is None else LinearConfig(**config),
            cublas_us=float(value["cublas_us"]),
            best_us=float(value["best_us"]),
        )


def cache_path() -> Path | None:
    """Where the choices are kept; None when LODGER_CACHE_DIR is set and empty."""
    directory = os.environ.get("LODGER_CACHE_DIR")
    if directory is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        directory = os.path.join(base, "lodger")
    if not directory:
        return None
    return Path(directory) / FILE_NAME


@functools.cache
def _sources_hash() -> str:
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def device_key(device: torch.device) -> str:
    """The group a device's choices are stored under."""
    import triton

    index = torch.cuda.current_device() if device.index is None else device.index
    major, minor = torch.cuda.get_device_capability(index)
    return (
        f"{torch.cuda.get_device_name(index)} sm{major}{minor} torch {torch.__version__} "
        f"cuda {torch.version.cuda} triton {triton.__version__} kernels {_sources_hash()}"
    )


def case_key(dtype: torch.dtype, num_cols: int, depth: int, batch_size: int) -> str:
    """One (dtype, N, K, batch size) case, e.g. 'bfloat16 N=6144 K=4096 M=1'."""
    return f"{str(dtype).removeprefix('torch.')} N={num_cols} K={depth} M={batch_size}"


class TuningCache:
    """The choices of one device group, read from the file at construction; `save` merges
    new ones into the file (other groups and entries are kept)."""

    def __init__(self, group: str, path: Path | None = None):
        self.group = group
        self.path = cache_path() if path is None else path
        self.entries: dict[str, CachedChoice] = {}
        if self.path is not None:
            self.entries = self._read().get(group, {})

    def _read(self) -> dict[str, dict[str, CachedChoice]]:
        """Every group in the file; {} where it is missing or cannot be read."""
        assert self.path is not None
        try:
            with open(self.path) as f:
                data = json.load(f)
            if data.get("version") != FORMAT_VERSION:
                return {}
            return {
                group: {case: CachedChoice.from_json(v) for case, v in cases.items()}
                for group, cases in data["groups"].items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError) as e:
            logger.warning("matmul tuning cache %s is unreadable (%s); tuning afresh", self.path, e)
            return {}

    def get(self, case: str) -> CachedChoice | None:
        return self.entries.get(case)

    def save(self, new: dict[str, CachedChoice]) -> None:
        """Add `new` to this group and write the file (atomically: a temporary file then a
        rename, so a concurrent reader sees the old file or the new one)."""
        self.entries.update(new)
        if self.path is None or not new:
            return
        try:
            groups = self._read()
            groups.setdefault(self.group, {}).update(new)
            data = {
                "version": FORMAT_VERSION,
                "groups": {
                    group: {case: choice.to_json() for case, choice in sorted(cases.items())}
                    for group, cases in groups.items()
                },
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".matmul_tuning.")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=1)
                os.replace(temporary, self.path)
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
        except OSError as e:
            logger.warning("matmul tuning cache %s not written (%s)", self.path, e)
