#!/usr/bin/env bash
# Graphs for steps with prompt tokens above 512 tokens (engine/prompt_graph_sizes.py), on
# the GPU, same tree, LODGER_PROMPT_GRAPH_TOKENS=512 (no large bucket: main's behaviour)
# against the start-up timing's choice. From the repository root, carrying .whl:
#
#   LODGER_COMMIT=<hash> bash bench/run_gpu_prompt_graphs.sh tests   # e2e tests (~3 min)
#   LODGER_COMMIT=<hash> bash bench/run_gpu_prompt_graphs.sh small   # qwen3-0.6b (~6 min)
#   LODGER_COMMIT=<hash> bash bench/run_gpu_prompt_graphs.sh llama   # llama3-8b (~4 min)
#
# small: time to first token by prompt length, a serving A/B with 1024-token prompts and a
# nano A/B; llama: which large buckets the timing keeps on an 8B model (expected: none) and
# a batch-1 A/B. Logs and records under $OUT.
set -uo pipefail
part=${1:?usage: bash bench/run_gpu_prompt_graphs.sh tests|small|llama}
source bench/gpu_env.sh
commit=${LODGER_COMMIT:-unknown}
checkpoints=/tmp/lodger-bench-checkpoints
rc=0
case "$part" in
  tests)
    python3 -m pytest -m gpu tests/engine/test_cuda_end_to_end.py -q -p no:cacheprovider -x \
      --tb=short 2>&1 | tail -20 | tee "$out/e2e.log" || rc=1
    ;;
  small)
    for limit in 512 auto; do
      env_args=()
      [ "$limit" = 512 ] && env_args=(LODGER_PROMPT_GRAPH_TOKENS=512)
      env "${env_args[@]}" python3 -m bench.prefill_latency --shape qwen3-0.6b \
        --lengths 256,512,1024,2048,4096 --repeats 4 --checkpoints "$checkpoints" \
        --out "$out/prefill-latency-qwen3-0.6b-$limit.json" 2>&1 |
        grep -v "incorrect regex" | tee -a "$out/prefill_latency.log" || rc=1
    done
    LODGER_COMMIT=$commit BASELINE_COMMIT=$commit-graphs-512 \
      BASELINE_ENV=LODGER_PROMPT_GRAPH_TOKENS=512 BENCH=serving bash bench/run_gpu_ab.sh . \
      --shape qwen3-0.6b --workload fixed-1024-128-200 --rates 16,inf --max-seconds 60 || rc=1
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
    echo "unknown part $part: tests, small or llama" >&2
    exit 2
    ;;
esac
# what the start-up timing chose, from the records (graph_token_buckets, large_bucket_timings)
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
records = [json.loads(line) for f in out.glob("*.jsonl") for line in f.read_text().splitlines()]
records += [json.loads(f.read_text()) for f in out.glob("prefill-latency-*.json")]
for r in records:
    if "graph_token_buckets" in r:
        print(r["commit"], r.get("workload", "prefill_latency"), "buckets",
              r["graph_token_buckets"][-4:], r["large_bucket_timings"])
PY
exit $rc
