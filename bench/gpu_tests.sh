#!/usr/bin/env bash
# On the device, from the repository root: with a pytest -k expression, the kernel GPU tests
# it selects (with the CPU PTX-order tests); then the end-to-end GPU tests, unless E2E=0.
# Logs under $OUT.
#   bash bench/gpu_tests.sh ["decode or pdl"]
set -uo pipefail
source bench/gpu_env.sh
kernels=0
if [ $# -gt 0 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/kernels/test_pdl_order.py \
    tests/kernels/test_pdl_gpu.py tests/kernels/test_triton_gpu.py -k "$1" \
    2>&1 | tail -15 | tee "$out/kernel_tests.log"
  kernels=${PIPESTATUS[0]}
fi
end_to_end=0
if [ "${E2E:-1}" != 0 ]; then
  python3 -m pytest -m gpu tests/engine/test_cuda_end_to_end.py -q -p no:cacheprovider -x \
    --tb=short 2>&1 | tail -20 | tee "$out/e2e.log"
  end_to_end=${PIPESTATUS[0]}
fi
[ "$kernels" = 0 ] && [ "$end_to_end" = 0 ]
