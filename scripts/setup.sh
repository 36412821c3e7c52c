#!/usr/bin/env bash
# Set up a virtual environment with torch and build strideconv into it.
#   STRIDECONV_VENV  where the environment lives (default: .venv in the repository)
#   TORCH_SPEC       the torch to install when none is there (default: torch==2.13.0)
#   MAX_JOBS         parallel compile jobs (torch.utils.cpp_extension's variable)
# An environment that already has torch keeps it: the extension is built against it.
# A second run does no work: packages are installed once (the requirements file's hash is
# remembered), and the extension is rebuilt only when a source file, setup.py or the torch
# version changed (ninja recompiles only what changed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STRIDECONV_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.strideconv-setup"

[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -c "import torch" 2>/dev/null || {
  "$PY" -m pip install -q --upgrade pip setuptools wheel
  "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
}
reqs="$(sha1sum "$ROOT/requirements-dev.txt" | cut -d' ' -f1)"
if [ ! -f "$STAMP.reqs" ] || [ "$(cat "$STAMP.reqs")" != "$reqs" ]; then
  "$PY" -m pip install -q -r "$ROOT/requirements-dev.txt"
  echo "$reqs" > "$STAMP.reqs"
fi
# What the build depends on: the sources, setup.py, and the torch it builds against.
sources="$(cd "$ROOT" && { "$PY" -c 'import torch; print(torch.__version__)'; \
  find csrc setup.py pyproject.toml -type f -print0 | sort -z | xargs -0 sha1sum; } | sha1sum | cut -d' ' -f1)"
if [ ! -f "$STAMP.build" ] || [ "$(cat "$STAMP.build")" != "$sources" ] \
   || ! "$PY" -c "import strideconv" 2>/dev/null; then
  (cd "$ROOT" && "$PY" -m pip install -q --no-build-isolation -e .)
  echo "$sources" > "$STAMP.build"
fi
"$PY" -c "import torch, strideconv; print('strideconv ready: torch', torch.__version__)"
