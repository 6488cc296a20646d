#!/usr/bin/env bash
# On a CUDA machine, from the repository root: the GPU kernel tests, then bench/kernels.py.
#   bash bench/run_gpu_kernels.sh [--sweep]
# Logs and the JSON results go to $OUT (the device tool's output folder) or /tmp/lodger-gpu.
# lodger is made importable without installing it: a throwaway package folder links the
# repository's parts under the names lodger.kernels, lodger.engine, ...
set -uo pipefail
out=${OUT:-/tmp/lodger-gpu}
mkdir -p "$out"
root=$(pwd)
shim=$(mktemp -d)
mkdir "$shim/lodger"
cp lodger_pkg/*.py "$shim/lodger/"
for part in engine kernels asgi sdk; do ln -s "$root/$part" "$shim/lodger/$part"; done
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(0))
PY
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
# the device copy of the tree may lack .git: pass LODGER_COMMIT=<hash> to record it
echo "commit ${LODGER_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
SECONDS=0
python3 -m pytest tests/kernels -q -p no:cacheprovider -rs 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
echo "kernel tests: exit $tests_rc in ${SECONDS}s"
SECONDS=0
python3 bench/kernels.py --json "$out/kernels.json" "$@" 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "bench: exit $bench_rc in ${SECONDS}s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
