"""Runs interpreted_cases.py (every Triton kernel vs its reference) under the interpreter.

TRITON_INTERPRET must be set before triton is first imported, which other tests in this
process may already have done, so the cases run in a fresh Python. On a CUDA machine the
compiled kernels are tested by test_triton_gpu.py instead.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CASES = Path(__file__).with_name("interpreted_cases.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def run_interpreted_cases(cases: Path) -> None:
    """Run the pytest module `cases` in a fresh Python with TRITON_INTERPRET=1; all must pass."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", str(cases), "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=540
    )
    assert result.returncode == 0, f"interpreted kernel cases failed:\n{result.stdout[-8000:]}"
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="compiled kernels run in test_triton_gpu")
def test_triton_kernels_under_interpreter():
    run_interpreted_cases(CASES)
