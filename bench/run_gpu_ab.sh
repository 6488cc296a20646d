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
# $OUT/offline.jsonl with their own commit. BASELINE_ENV="VAR=value ..." is exported for the
# baseline run only; with BASELINE_DIR "." that compares one tree with and without a switch:
#
#   LODGER_COMMIT=<hash> BASELINE_COMMIT=<hash>-pdl-off BASELINE_ENV=LODGER_PDL=0 \
#       bash bench/run_gpu_ab.sh . --shape llama3-8b --workloads batch1
#
# BENCH=serving runs bench.serving instead (records in $OUT/serving.jsonl; carry .whl):
#
#   BENCH=serving LODGER_COMMIT=<new> BASELINE_COMMIT=<old> bash bench/run_gpu_ab.sh \
#       .baseline --shape qwen3-0.6b --workload fixed-128-128-400 --rates 16,64
set -uo pipefail
baseline=${1:?usage: bash bench/run_gpu_ab.sh BASELINE_DIR [bench.throughput args...]}
shift
source bench/gpu_env.sh
bench=${BENCH:-throughput}
args=("$@" --checkpoints /tmp/lodger-bench-checkpoints)
records=serving.jsonl
if [ "$bench" = throughput ]; then
  args+=(--engines lodger)
  records=offline.jsonl
fi
rc=0
# shellcheck disable=SC2086  # BASELINE_ENV is a list of VAR=value words
env LODGER_COMMIT="${BASELINE_COMMIT:-baseline}" ${BASELINE_ENV:-} bash bench/in_tree.sh \
  "$baseline" python3 -m "bench.$bench" "${args[@]}" --out "$out/$records" 2>&1 |
  tee -a "$out/ab.log" || rc=1
python3 -m "bench.$bench" "${args[@]}" --out "$out/$records" 2>&1 | tee -a "$out/ab.log" || rc=1
exit $rc
