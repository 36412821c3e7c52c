#!/usr/bin/env bash
# Set up a virtual environment with torch and build strideconv into it.
#   STRIDECONV_VENV  where the environment lives (default: .venv in the repository)
#   TORCH_SPEC       the torch to install when none is there (default: torch==2.13.0)
# An environment that already has torch keeps it: the extension is built against it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STRIDECONV_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip setuptools wheel
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
"$PY" -m pip install -q -r "$ROOT/requirements-dev.txt"
(cd "$ROOT" && "$PY" -m pip install -q --no-build-isolation -e .)
"$PY" -c "import torch, strideconv; print('strideconv ready: torch', torch.__version__)"
