# Sourced by the bench/run_gpu_*.sh scripts on the device machine, from the repository root.
# Makes lodger importable without installing it (a throwaway package folder links the
# repository's parts under lodger.engine, lodger.kernels, ...), installs carried wheels from
# .whl/ when present, sets $out (the device tool's $OUT, else /tmp/lodger-gpu) and prints
# the versions, the card and the commit (pass LODGER_COMMIT=<hash>: .git may not travel).
export OUT=${OUT:-/tmp/lodger-gpu}
out=$OUT
mkdir -p "$out"
root=$(pwd)
wheels=${LODGER_WHEELS:-.whl}  # bench/in_tree.sh points another tree at the root's wheels
if compgen -G "$wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$wheels"/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
shim=$(mktemp -d)
mkdir "$shim/lodger"
cp -r lodger_pkg/* "$shim/lodger/"
for part in engine kernels asgi sdk; do ln -s "$root/$part" "$shim/lodger/$part"; done
export PYTHONPATH="$shim:$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch, triton, transformers
print("torch", torch.__version__, "triton", triton.__version__, "transformers",
      transformers.__version__, torch.cuda.get_device_name(0))
PY
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
echo "commit ${LODGER_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
