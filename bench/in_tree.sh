#!/usr/bin/env bash
# Runs one command in another checkout of lodger (a tree made by `git archive`, carried to
# the device) with this root's carried wheels: cd TREE, source TREE's bench/gpu_env.sh (its
# banner goes to stderr), run COMMAND there. The environment passes through (LODGER_COMMIT,
# switches); callers source bench/gpu_env.sh at the root first for $out. TREE "." is this tree.
#   LODGER_COMMIT=<old> bash bench/in_tree.sh .baseline python3 bench/kernels.py --json "$out/k.json"
set -uo pipefail
tree=${1:?usage: bash bench/in_tree.sh TREE COMMAND...}
shift
[ $# -gt 0 ] || { echo "usage: bash bench/in_tree.sh TREE COMMAND..." >&2; exit 2; }
[ -f "$tree/bench/gpu_env.sh" ] || { echo "$tree is not a lodger tree (no bench/gpu_env.sh)" >&2; exit 2; }
root=$(pwd)
cd "$tree" || exit 2
export LODGER_WHEELS="$root/.whl"
source bench/gpu_env.sh >&2
exec "$@"
