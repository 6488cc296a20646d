#!/usr/bin/env bash
# On a CUDA machine, from the repository root: the engine's GPU tests (lodger against
# transformers in float32 and bf16, eager and CUDA graphs; sampler without host syncs),
# then lodger's offline throughput on the given workloads (default: nano on qwen3-0.6b).
#   LODGER_COMMIT=<hash> bash bench/run_gpu_e2e.sh [bench.throughput args...]
set -uo pipefail
source bench/gpu_env.sh
SECONDS=0
python3 -m pytest -m gpu tests/engine -q -p no:cacheprovider -rs -x --tb=short --durations=10 2>&1 | tee "$out/gpu_e2e_tests.log"
tests_rc=${PIPESTATUS[0]}
echo "engine GPU tests: exit $tests_rc in ${SECONDS}s"
SECONDS=0
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--shape qwen3-0.6b --workloads nano --engines lodger)
python3 -m bench.throughput "${args[@]}" --out "$out/offline.jsonl" 2>&1 | tee "$out/throughput.log"
bench_rc=${PIPESTATUS[0]}
echo "throughput: exit $bench_rc in ${SECONDS}s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
