#!/usr/bin/env bash
# Loads before the PDL wait (kernels/pdl.py: the rotary pass's inputs, decode attention's
# metadata) on the GPU, against main. From the repository root, carrying .whl and .baseline
# (main's tree:
#   rm -rf .baseline && mkdir .baseline && git archive main engine kernels asgi sdk bench \
#       lodger_pkg/*.py | tar -x -C .baseline
# ), one or more parts, each a device call of at most 10 minutes:
#
#   LODGER_COMMIT=<hash> BASELINE_COMMIT=<main> bash bench/run_gpu_pre_wait.sh tests kernels  # ~6 min
#   LODGER_COMMIT=<hash> BASELINE_COMMIT=<main> bash bench/run_gpu_pre_wait.sh batch1 nano    # ~5 min
#
# tests: the PDL and kernel GPU tests, the PTX-order tests on this Triton, the end-to-end
# GPU tests; kernels: bench/kernels.py's tables for both trees (decode at batch 1 is the
# point); batch1: Llama-3-8B batch-1 decode, two rounds, main first; nano: one round.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: bash bench/run_gpu_pre_wait.sh tests|kernels|batch1|nano..." >&2; exit 2; }
[ -d .baseline ] || { echo ".baseline (main's tree) is missing: see the header" >&2; exit 2; }
commit=${LODGER_COMMIT:-unknown}
baseline_commit=${BASELINE_COMMIT:-main}
source bench/gpu_env.sh
rc=0
for part in "$@"; do
case "$part" in
  tests)
    bash bench/gpu_tests.sh "pdl or decode or rotary or hopper or linear_configs" || rc=1
    ;;
  kernels)
    for tree in .baseline .; do
      bash bench/in_tree.sh "$tree" python3 bench/kernels.py \
        --json "$out/kernels-$([ "$tree" = . ] && echo new || echo main).json" 2>&1 |
        sed -n '/paged decode attention/,/^$/p' | tee -a "$out/kernels.log" || rc=1
    done
    ;;
  batch1)
    for round in 1 2; do
      LODGER_COMMIT=$commit BASELINE_COMMIT=$baseline_commit bash bench/run_gpu_ab.sh .baseline \
        --shape llama3-8b --workloads batch1 --timeout 200 || rc=1
    done
    ;;
  nano)
    LODGER_COMMIT=$commit BASELINE_COMMIT=$baseline_commit bash bench/run_gpu_ab.sh .baseline \
      --shape qwen3-0.6b --workloads nano --timeout 200 || rc=1
    ;;
  *)
    echo "unknown part $part: tests, kernels, batch1 or nano" >&2
    exit 2
    ;;
esac
done
exit $rc
