#!/usr/bin/env bash
# On a CUDA machine, from the repository root: the GPU kernel tests, then bench/kernels.py.
#   bash bench/run_gpu_kernels.sh [--sweep]
# Logs and the JSON results go to $OUT (the device tool's output folder) or /tmp/lodger-gpu.
set -uo pipefail
source bench/gpu_env.sh
SECONDS=0
python3 -m pytest tests/kernels -q -p no:cacheprovider -rs 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
echo "kernel tests: exit $tests_rc in ${SECONDS}s"
SECONDS=0
python3 bench/kernels.py --json "$out/kernels.json" "$@" 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "bench: exit $bench_rc in ${SECONDS}s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
