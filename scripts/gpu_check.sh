#!/usr/bin/env bash
# The GPU record in one command, for a machine with a CUDA GPU, torch built for CUDA, nvcc and
# no network: build the extension for the GPU (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise),
# run the CUDA half of the test suite, benchmarks/run.py --device cuda and benchmarks/models.py
# --device cuda, and write everything into one folder (at most 8 files):
#   gpu.txt      the machine, torch, CUDA, cuDNN, the commit and each step's time and exit status
#   build.log    the build
#   tests.log    pytest -k cuda
#   bench.log    the output of the two benchmarks
#   report.md, results.json   benchmarks/run.py --device cuda
#   models.md, models.json    whole training steps, eager, CUDA graph, and torch.compile for two models
# Usage: bash scripts/gpu_check.sh [OUT]   (default: $OUT, else benchmarks/out/gpu-<UTC date and time>)
# Python packages the machine lacks can sit as wheels in .whl/ (installed to /tmp/site, no network).
# Each step has a time limit, so that the whole takes under 8 minutes on an H100/H200.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-${OUT:-$ROOT/benchmarks/out/gpu-$(date -u +%Y-%m-%dT%H%M%S)}}"
PY="${PYTHON:-python3}"
[ -e "$DEST/gpu.txt" ] && { echo "gpu_check: $DEST already holds a record; a run never overwrites one"; exit 1; }
mkdir -p "$DEST"
cd "$ROOT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" FORCE_CUDA=1
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
INFO="$DEST/gpu.txt"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())'
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
} > "$INFO" 2>&1

step() {  # step NAME LIMIT_SECONDS LOG COMMAND...: run with a time limit, log it, note time and status
  local name="$1" limit="$2" log="$3"; shift 3
  local start=$SECONDS
  timeout "$limit" "$@" > "$log" 2>&1
  local status=$?
  echo "$name: exit $status after $((SECONDS - start)) s (limit $limit s)" | tee -a "$INFO"
  return $status
}

step build 180 "$DEST/build.log" "$PY" setup.py build_ext --inplace || { tail -30 "$DEST/build.log"; exit 1; }
step tests 200 "$DEST/tests.log" "$PY" -m pytest tests -q -rs -k cuda -p no:cacheprovider
tail -3 "$DEST/tests.log"
step benchmark 150 "$DEST/bench.log" "$PY" benchmarks/run.py --device cuda --skip pictures --out "$DEST/bench"
cp "$DEST/bench.log" "$DEST/bench-run.log"
step models 200 "$DEST/bench.log" "$PY" benchmarks/models.py --device cuda --compile-models ResNet-18 "DCGAN generator" \
  --out "$DEST/bench"
cat "$DEST/bench.log" >> "$DEST/bench-run.log" && mv "$DEST/bench-run.log" "$DEST/bench.log"
for f in report.md results.json models.md models.json; do
  [ -f "$DEST/bench/$f" ] && mv "$DEST/bench/$f" "$DEST/$f"
done
rm -rf "$DEST/bench"
echo "gpu_check: record in $DEST" | tee -a "$INFO"
