#!/usr/bin/env bash
# Create (once) and check the Python 3.9 virtual environment that holds real Caffe2: the caffe2.python
# package of the PyPI torch 1.8.1 wheel (docs: ../shared/docs/caffe2-facts.md §11). The parity suite
# (tests/parity) runs Caffe2 in a subprocess of this venv as its oracle.
#
#   scripts/caffe2_venv.sh          create it if missing, check it, print its python's path
#   scripts/caffe2_venv.sh --path   only print where it lives (creates nothing)
#
# Where: $CAFFE2_VENV, default ${XDG_CACHE_HOME:-~/.cache}/caffe2-ort/caffe2-py39 (outside the source
# tree: the torch wheel is ~800 MB). Which interpreter: $CAFFE2_PYTHON39, default the first of
# ~/.pyenv/versions/3.9.*/bin/python3.9 and python3.9 on PATH.
# The venv counts as built only after the import check passed (a marker file); an interrupted
# build is removed and redone on the next call.
set -euo pipefail

VENV=${CAFFE2_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/caffe2-ort/caffe2-py39}
PINS=(torch==1.8.1 numpy==1.23.5 protobuf==3.20.3 future six)
MARKER="$VENV/.caffe2-ort-ready"

if [[ "${1:-}" == "--path" ]]; then
  echo "$VENV"
  exit 0
fi

check() {
  # Caffe2 prints CPU-feature notes on import: show its output only when the check fails
  local log
  log=$("$VENV/bin/python" - 2>&1 <<'PY'
from caffe2.python import core, workspace, brew, model_helper, optimizer  # noqa: F401
workspace.GlobalInit(["caffe2", "--caffe2_log_level=2"])
n = len(workspace.RegisteredOperators())
assert n > 500, f"only {n} Caffe2 operators registered"
PY
  ) || { echo "$log" >&2; echo "error: $VENV does not import caffe2.python" >&2; return 1; }
}

if [[ -f "$MARKER" ]] && check; then
  echo "$VENV/bin/python"
  exit 0
fi

find_python39() {
  if [[ -n "${CAFFE2_PYTHON39:-}" ]]; then echo "$CAFFE2_PYTHON39"; return; fi
  local p
  for p in "$HOME"/.pyenv/versions/3.9.*/bin/python3.9 "$(command -v python3.9 2>/dev/null || true)"; do
    # a pyenv shim is on PATH even where it cannot run 3.9, so each candidate must actually start
    if [[ -x "$p" ]] && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' 2>/dev/null; then
      echo "$p"; return
    fi
  done
  echo "error: no Python 3.9 found (set CAFFE2_PYTHON39, or install one, e.g. pyenv install 3.9)" >&2
  exit 2
}

PY39=$(find_python39)
"$PY39" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' 2>/dev/null \
  || { echo "error: $PY39 is not a Python 3.9" >&2; exit 2; }

if [[ -e "$VENV" && ! -f "$VENV/pyvenv.cfg" && -n "$(ls -A "$VENV" 2>/dev/null)" ]]; then
  echo "error: $VENV exists and is not a virtual environment; refusing to replace it (set CAFFE2_VENV)" >&2
  exit 2
fi
echo "building the Caffe2 venv in $VENV with $PY39 (torch 1.8.1 is an ~800 MB download)" >&2
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PY39" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}"
check
touch "$MARKER"
echo "$VENV/bin/python"
