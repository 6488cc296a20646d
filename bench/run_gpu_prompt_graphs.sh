#!/usr/bin/env bash
# Graphs for steps with prompt tokens above 512 tokens (engine/prompt_graph_sizes.py), on
# the GPU, same tree, LODGER_PROMPT_GRAPH_TOKENS=512 (no large bucket: main's behaviour)
# against the start-up timing's choice. From the repository root, carrying .whl, one or
# more parts (each fits a device call of 10 minutes; two together may not):
#
#   LODGER_COMMIT=<hash> bash bench/run_gpu_prompt_graphs.sh tests ttft   # ~5 min
#   LODGER_COMMIT=<hash> bash bench/run_gpu_prompt_graphs.sh serving nano # ~6 min
#   LODGER_COMMIT=<hash> bash bench/run_gpu_prompt_graphs.sh llama        # ~4 min
#
# tests: the end-to-end GPU tests; ttft: qwen3-0.6b time to first token by prompt length;
# serving: a qwen3-0.6b serving A/B with 1024-token prompts; nano: a qwen3-0.6b nano A/B;
# llama: which large buckets the timing keeps on an 8B model (expected: few or none) and a batch-1
# A/B. Logs and records under $OUT.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: bash bench/run_gpu_prompt_graphs.sh tests|ttft|serving|nano|llama..." >&2; exit 2; }
source bench/gpu_env.sh
commit=${LODGER_COMMIT:-unknown}
checkpoints=/tmp/lodger-bench-checkpoints
rc=0
for part in "$@"; do
case "$part" in
  tests)
    bash bench/gpu_tests.sh || rc=1
    ;;
  ttft)
    for limit in 512 auto; do
      env_args=()
      [ "$limit" = 512 ] && env_args=(LODGER_PROMPT_GRAPH_TOKENS=512)
      env "${env_args[@]}" python3 -m bench.prefill_latency --shape qwen3-0.6b \
        --lengths 256,512,1024,2048,4096,8192 --repeats 4 --checkpoints "$checkpoints" \
        --out "$out/prefill-latency-qwen3-0.6b-$limit.json" 2>&1 |
        grep -v "incorrect regex" | tee -a "$out/prefill_latency.log" || rc=1
    done
    ;;
  serving)
    LODGER_COMMIT=$commit BASELINE_COMMIT=$commit-graphs-512 \
      BASELINE_ENV=LODGER_PROMPT_GRAPH_TOKENS=512 BENCH=serving bash bench/run_gpu_ab.sh . \
      --shape qwen3-0.6b --workload fixed-1024-128-200 --rates 16,inf --max-seconds 60 || rc=1
    ;;
  nano)
    LODGER_COMMIT=$commit BASELINE_COMMIT=$commit-graphs-512 \
      BASELINE_ENV=LODGER_PROMPT_GRAPH_TOKENS=512 bash bench/run_gpu_ab.sh . \
      --shape qwen3-0.6b --workloads nano --timeout 150 || rc=1
    ;;
  llama)
    LODGER_COMMIT=$commit BASELINE_COMMIT=$commit-graphs-512 \
      BASELINE_ENV=LODGER_PROMPT_GRAPH_TOKENS=512 bash bench/run_gpu_ab.sh . \
      --shape llama3-8b --workloads batch1 --timeout 200 || rc=1
    ;;
  *)
    echo "unknown part $part: tests, ttft, serving, nano or llama" >&2
    exit 2
    ;;
esac
done
# what the start-up timing chose, from the records (graph_token_buckets, large_bucket_timings)
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
records = [json.loads(line) for f in out.glob("*.jsonl") for line in f.read_text().splitlines()]
records += [json.loads(f.read_text()) for f in out.glob("prefill-latency-*.json")]
for r in records:
    if "graph_token_buckets" in r:
        print(r["commit"], r.get("workload", "prefill_latency"), "buckets",
              r["graph_token_buckets"][-4:], "graphs' MiB", r.get("graph_memory_mib"),
              r["large_bucket_timings"])
PY
exit $rc
