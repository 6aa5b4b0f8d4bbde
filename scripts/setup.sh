#!/usr/bin/env bash
# Set up (or refresh) the project environment in .venv: dependencies, then the compiled extension.
# Quick to rerun: pip runs only when requirements.txt changed, the build only when csrc/ or
# setup.py changed (or the extension is missing). Builds CUDA kernels when nvcc and a CUDA torch
# are present (CLAREP_FAST_CUDA=0 skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
VENV_PY=.venv/bin/python

requirements_stamp=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -c1-16)
if [ "$(cat .venv/.requirements-stamp 2>/dev/null)" != "$requirements_stamp" ]; then
  echo "setup: installing dependencies (a few minutes the first time)"
  # setuptools < 81: imagecorruptions (the corruption benchmark) imports pkg_resources, which 81 removed
  "$VENV_PY" -m pip install -q --upgrade pip "setuptools<81" wheel
  "$VENV_PY" -m pip install -q -r requirements.txt
  "$VENV_PY" -m pip install -q --no-deps -r requirements-nodeps.txt
  echo "$requirements_stamp" > .venv/.requirements-stamp
fi

build_stamp=$( (cat setup.py pyproject.toml; find csrc -type f | sort | xargs cat; echo "${CLAREP_FAST_CUDA:-auto}") | sha256sum | cut -c1-16)
if [ "$(cat .venv/.build-stamp 2>/dev/null)" != "$build_stamp" ] || ! ls clarep_fast/_C*.so > /dev/null 2>&1; then
  echo "setup: building clarep_fast._C (about a minute; two with CUDA)"
  # PYTHONWARNINGS: setuptools announces its editable-install strategy with a warning banner nobody can act on
  PYTHONWARNINGS=ignore MAX_JOBS=${MAX_JOBS:-2} "$VENV_PY" -m pip install -q --no-deps --no-build-isolation -e .
  "$VENV_PY" -c "import clarep_fast._C" || { echo "setup: the extension did not build"; exit 1; }
  echo "$build_stamp" > .venv/.build-stamp
fi
echo "setup: ready ($("$VENV_PY" -c 'import torch; print("torch", torch.__version__)'))"
