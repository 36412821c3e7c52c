#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the benchmark. Extra arguments go to benchmarks/run.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT" && "${STRIDECONV_VENV:-$ROOT/.venv}/bin/python" benchmarks/run.py "$@"
