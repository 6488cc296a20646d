#!/usr/bin/env bash
# Matmul tuning with its cache, on the GPU machine from the repository root:
#   LODGER_COMMIT=<hash> bash bench/run_gpu_tuning_cache.sh
# Runs Llama-3-8B batch-1 decode twice with the default engine options (tuning on) and an
# empty cache directory: the first run times and writes the choices, the second reads them.
# Each record's matmul_tuning_s says what start-up paid; logs and records go to $OUT.
set -uo pipefail
source bench/gpu_env.sh
export LODGER_CACHE_DIR=$out/tuning-cache
rm -rf "$LODGER_CACHE_DIR"
for run in first second; do
  python3 -m bench.throughput --shape llama3-8b --workloads batch1 --engines lodger \
    --checkpoints /tmp/lodger-bench-checkpoints --timeout 200 --out "$out/offline.jsonl" \
    2>&1 | tee "$out/tuning-cache-$run.log" | grep "tok/s"
  python3 - "$out/offline.jsonl" "$run" <<'PY'
import json, sys
record = [json.loads(line) for line in open(sys.argv[1])][-1]
cached = sum(s.endswith("cached") for s in record.get("matmul_tuning", []))
print(f"{sys.argv[2]} run: matmul_tuning_s {record.get('matmul_tuning_s')}, "
      f"{cached} of {len(record.get('matmul_tuning', []))} cases from the cache")
PY
done
ls -l "$LODGER_CACHE_DIR"
