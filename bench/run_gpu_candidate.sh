#!/usr/bin/env bash
# A candidate tree (this one) against main on the GPU, in one or more device calls. From the
# repository root, carrying .whl and .baseline (main's tree:
#   rm -rf .baseline && mkdir .baseline && git archive main engine kernels asgi sdk bench \
#       lodger_pkg/*.py | tar -x -C .baseline
# ), one or more parts, each call at most 10 minutes:
#
#   LODGER_COMMIT=<hash> BASELINE_COMMIT=<main> bash bench/run_gpu_candidate.sh tests kernels  # ~6 min
#   LODGER_COMMIT=<hash> BASELINE_COMMIT=<main> bash bench/run_gpu_candidate.sh batch1 nano    # ~5 min
#
# tests: the kernel GPU tests that TESTS (a pytest -k expression, default below) selects, the
# PTX-order tests on this Triton, the end-to-end GPU tests; kernel-tests: the same without the
# end-to-end ones; kernels: bench/kernels.py's decode attention tables for both trees;
# linear: bench/linear.py on qwen3-0.6b for both trees (LINEAR_BUDGET seconds each, default
# 100); batch1: Llama-3-8B batch-1 decode, two rounds, main first; nano: one round, main first.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: bash bench/run_gpu_candidate.sh tests|kernel-tests|kernels|linear|batch1|nano..." >&2; exit 2; }
[ -d .baseline ] || { echo ".baseline (main's tree) is missing: see the header" >&2; exit 2; }
commit=${LODGER_COMMIT:-unknown}
baseline_commit=${BASELINE_COMMIT:-main}
tests=${TESTS:-pdl or decode or rotary or hopper or linear_configs}
source bench/gpu_env.sh
rc=0
for part in "$@"; do
case "$part" in
  tests)
    bash bench/gpu_tests.sh "$tests" || rc=1
    ;;
  kernel-tests)
    E2E=0 bash bench/gpu_tests.sh "$tests" || rc=1
    ;;
  kernels)
    for tree in .baseline .; do
      bash bench/in_tree.sh "$tree" python3 bench/kernels.py \
        --json "$out/kernels-$([ "$tree" = . ] && echo new || echo main).json" 2>&1 |
        sed -n '/paged decode attention/,/^$/p' | tee -a "$out/kernels.log" || rc=1
    done
    ;;
  linear)
    for tree in .baseline .; do
      bash bench/in_tree.sh "$tree" python3 -m bench.linear --shapes qwen3-0.6b \
        --budget "${LINEAR_BUDGET:-100}" \
        --json "$out/linear-$([ "$tree" = . ] && echo new || echo main).json" 2>&1 |
        grep -E "M=|budget" | tee -a "$out/linear.log" || rc=1
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
    echo "unknown part $part: tests, kernel-tests, kernels, linear, batch1 or nano" >&2
    exit 2
    ;;
esac
done
exit $rc
