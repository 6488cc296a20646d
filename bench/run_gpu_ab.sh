#!/usr/bin/env bash
# A/B on one warm card: lodger's offline throughput from this tree and from another
# checkout of lodger (the baseline), same checkpoints, same call, so the two figures
# compare. From the repository root on a CUDA machine:
#
#   git archive <old> engine kernels asgi sdk bench lodger_pkg/*.py | tar -x -C .baseline
#   # (.baseline in .git/info/exclude; carry it)
#   LODGER_COMMIT=<new> BASELINE_COMMIT=<old> bash bench/run_gpu_ab.sh .baseline \
#       --shape qwen3-0.6b --workloads nano,batch1
#
# Runs the baseline first, then this tree (engine lodger only); both append to
# $OUT/offline.jsonl with their own commit.
set -uo pipefail
baseline=${1:?usage: bash bench/run_gpu_ab.sh BASELINE_DIR [bench.throughput args...]}
shift
root=$(pwd)
checkpoints=/tmp/lodger-bench-checkpoints
args=("$@" --engines lodger --checkpoints "$checkpoints")
rc=0
(
  cd "$baseline" && export LODGER_COMMIT=${BASELINE_COMMIT:-baseline} &&
    source bench/gpu_env.sh &&
    python3 -m bench.throughput "${args[@]}" --out "$out/offline.jsonl"
) 2>&1 | tee -a "${OUT:-/tmp/lodger-gpu}/ab.log" || rc=1
(
  cd "$root" && source bench/gpu_env.sh &&
    python3 -m bench.throughput "${args[@]}" --out "$out/offline.jsonl"
) 2>&1 | tee -a "${OUT:-/tmp/lodger-gpu}/ab.log" || rc=1
exit $rc
