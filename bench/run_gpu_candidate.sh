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
# end-to-end ones; kernels: bench/kernels.py's tables for both trees (main's first, as in
# every part); order: bench/kernels.py --sweep order for both; floor: its tables and --sweep
# floor (batch 1 from a one-tile context up) for both; linear: bench/linear.py on
# qwen3-0.6b for both (LINEAR_BUDGET seconds each, default 100); sampling: bench/kernels.py
# --sweep sampling alone for both (.baseline needs this tree's bench/ where main's lacks
# the sweep); batch1: Llama-3-8B batch-1
# decode, two rounds; nano: one round; llama: Llama-3-8B fixed-256-256-1024, one round.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: bash bench/run_gpu_candidate.sh tests|kernel-tests|kernels|order|floor|sampling|linear|batch1|nano|llama..." >&2; exit 2; }
[ -d .baseline ] || { echo ".baseline (main's tree) is missing: see the header" >&2; exit 2; }
commit=${LODGER_COMMIT:-unknown}
baseline_commit=${BASELINE_COMMIT:-main}
tests=${TESTS:-pdl or decode or rotary or hopper or linear_configs}
source bench/gpu_env.sh
rc=0

# both_trees NAME PATTERN COMMAND...: COMMAND in main's tree, then in this one, each with
# --json $out/NAME-main.json or NAME-new.json added; all its output to $out/NAME-main.out or
# NAME-new.out, the lines matching PATTERN (grep -E) to the output and $out/NAME.log
both_trees() {
  local name=$1 pattern=$2 tree side
  shift 2
  for tree in .baseline .; do
    side=$([ "$tree" = . ] && echo new || echo main)
    echo "== $name, $side's tree" | tee -a "$out/$name.log"
    bash bench/in_tree.sh "$tree" "$@" --json "$out/$name-$side.json" 2>&1 |
      tee "$out/$name-$side.out" | grep -E "$pattern" | tee -a "$out/$name.log" || rc=1
  done
}

for part in "$@"; do
case "$part" in
  tests)
    bash bench/gpu_tests.sh "$tests" || rc=1
    ;;
  kernel-tests)
    E2E=0 bash bench/gpu_tests.sh "$tests" || rc=1
    ;;
  kernels)
    both_trees kernels '^\||ceiling' python3 bench/kernels.py
    ;;
  order)
    both_trees order 'U\[|order' python3 bench/kernels.py --sweep order
    ;;
  floor)
    both_trees floor '^\||ceiling|splits' python3 bench/kernels.py --sweep floor
    ;;
  sampling)
    both_trees sampling 'sample' python3 bench/kernels.py --sweep sampling --skip-tables
    ;;
  linear)
    both_trees linear 'M=|budget' python3 -m bench.linear --shapes qwen3-0.6b \
      --budget "${LINEAR_BUDGET:-100}"
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
  llama)
    LODGER_COMMIT=$commit BASELINE_COMMIT=$baseline_commit bash bench/run_gpu_ab.sh .baseline \
      --shape llama3-8b --workloads fixed-256-256-1024 --timeout 200 || rc=1
    ;;
  *)
    echo "unknown part $part: tests, kernel-tests, kernels, order, floor, sampling, linear," \
      "batch1, nano or llama" >&2
    exit 2
    ;;
esac
done
exit $rc
