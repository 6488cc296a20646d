#!/usr/bin/env bash
# The benchmark recording of issue 5 on a CUDA machine, one workload group per device call
# (each group fits in one 10-minute call on an H100), from the repository root:
#
#   LODGER_COMMIT=<hash> bash bench/run_gpu.sh GROUP
#
#   qwen3-nano      nano + batch1 on qwen3-0.6b: lodger, hf-static, hf-cb; then the step
#                   profile of lodger on nano (bench.profile_lodger)
#   qwen3-fixed     fixed-256-256-1024 on qwen3-0.6b: lodger, hf-static, hf-cb
#   llama8b         fixed-256-256-1024 on llama3-8b (the shape of that goal): lodger,
#                   hf-static, hf-cb
#   qwen3-serving   lodger serve on qwen3-0.6b, fixed-1024-128-200 at 4, 16, 64 and inf req/s
#                   (needs the wheels: carry .whl made by `bash ../shared/device/wheels.sh`)
#   llama8b-batch1  batch1 on llama3-8b: lodger, hf-static, hf-cb; then the step profile
#                   of lodger on it
#
# The llama3-8b workloads are two groups, not one: hf-static compiles its decode step once
# per batch shape, so a process that ran fixed-256-256-1024 (batch 256) compiles again for
# batch1, and both compiles plus the 73 s fixed run did not fit in one engine's 170 s (the
# most three engines get in one call). Apart, each peer's process pays one compile. Each
# group's throughput run stops within --budget 540 s (checkpoint build included), inside
# the 10-minute device call; an engine gets the least of --timeout and what is left.
# bench.report shows each workload from the newest run that measured it.
#
# Results go to $OUT (offline.jsonl, serving.jsonl, profile-*.json, <group>.log). Back here:
#   cat /work/.device/N/offline.jsonl >> bench/results/offline.jsonl   # serving.jsonl likewise
#   .venv/bin/python -m bench.report   # rewrites the tables of docs/benchmarks.md + the plot
set -uo pipefail
group=${1:-}
case $group in
  qwen3-nano|qwen3-fixed|qwen3-serving|llama8b|llama8b-batch1) ;;
  *) echo "usage: bash bench/run_gpu.sh qwen3-nano|qwen3-fixed|qwen3-serving|llama8b|llama8b-batch1"
     exit 2 ;;
esac
source bench/gpu_env.sh  # sets $out, makes lodger importable, installs carried wheels
export LODGER_COMMIT=${LODGER_COMMIT:-unknown}
checkpoints=/tmp/lodger-bench-checkpoints
common=(--checkpoints "$checkpoints" --out "$out/offline.jsonl")
run_group() {
  local rc=0
  case $group in
    qwen3-nano)
      python3 -m bench.throughput --shape qwen3-0.6b --workloads nano,batch1 "${common[@]}" \
        --timeout 240 || rc=1
      python3 -m bench.profile_lodger --shape qwen3-0.6b --workload nano \
        --checkpoints "$checkpoints" --out "$out/profile-qwen3-nano.json" || rc=1 ;;
    qwen3-fixed)
      python3 -m bench.throughput --shape qwen3-0.6b --workloads fixed-256-256-1024 \
        "${common[@]}" --timeout 240 || rc=1 ;;
    qwen3-serving)
      python3 -m bench.serving --shape qwen3-0.6b --workload fixed-1024-128-200 \
        --rates 4,16,64,inf --max-seconds 120 --checkpoints "$checkpoints" \
        --out "$out/serving.jsonl" || rc=1 ;;
    llama8b)
      # lodger ~65 s and hf-static ~150 s (load, one compile, 73 s) leave hf-cb ~300 s
      python3 -m bench.throughput --shape llama3-8b --workloads fixed-256-256-1024 \
        "${common[@]}" --timeout 330 --budget 540 || rc=1 ;;
    llama8b-batch1)
      python3 -m bench.throughput --shape llama3-8b --workloads batch1 "${common[@]}" \
        --timeout 170 --budget 480 || rc=1
      python3 -m bench.profile_lodger --shape llama3-8b --workload batch1 \
        --checkpoints "$checkpoints" --out "$out/profile-llama8b-batch1.json" || rc=1 ;;
  esac
  echo "group $group done in ${SECONDS}s, exit $rc"
  return $rc
}
SECONDS=0
run_group 2>&1 | tee "$out/$group.log"
exit "${PIPESTATUS[0]}"
