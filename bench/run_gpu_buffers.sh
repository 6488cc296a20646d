#!/usr/bin/env bash
# Decode attention's pipeline depth on the GPU (bench/kernels.py BUFFER_SWEEP_TILES: from 5
# stages on, Triton gives K and V two buffers). From the repository root, carrying .whl and
# one tree per candidate default, each this tree with DecodeConfig's tile changed, e.g.
#   mkdir .ab64 && git archive HEAD engine kernels asgi sdk bench lodger_pkg/*.py | tar -x -C .ab64
#   sed -i 's/block_n: int = 128/block_n: int = 64/; s/num_stages: int = 3/num_stages: int = 5/' \
#       .ab64/kernels/decode_attention.py
# then, one device call (~6 min):
#   LODGER_COMMIT=<hash> bash bench/run_gpu_buffers.sh sweep .ab64 .ab32
# sweep: bench/kernels.py --sweep buffers; each tree: nano on qwen3-0.6b, this tree first
# (records carry LODGER_COMMIT-<tree name>).
set -uo pipefail
source bench/gpu_env.sh
commit=${LODGER_COMMIT:-unknown}
rc=0
trees=(.)
for part in "$@"; do
  if [ "$part" = sweep ]; then
    python3 bench/kernels.py --sweep buffers --json "$out/kernels-buffers.json" 2>&1 | tail -12 |
      tee "$out/buffers.log" || rc=1
  else
    [ -d "$part" ] || { echo "no tree $part" >&2; exit 2; }
    trees+=("$part")
  fi
done
[ ${#trees[@]} -gt 1 ] || exit $rc
for tree in "${trees[@]}"; do
  LODGER_COMMIT=$commit$([ "$tree" = . ] || echo "-${tree#.}") bash bench/in_tree.sh "$tree" \
    python3 -m bench.throughput --shape qwen3-0.6b --workloads nano --timeout 150 \
    --checkpoints /tmp/lodger-bench-checkpoints --engines lodger --out "$out/offline.jsonl" 2>&1 |
    grep -E "^nano|done in" | tee -a "$out/nano.log" || rc=1
done
exit $rc
