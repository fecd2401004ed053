#!/usr/bin/env bash
# Set up (if needed) and run the default test suite: unit tests on tiny models plus the real-pair
# tests (the first run converts the two GGUF models into the lcf cache, about 3 minutes).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` or `scripts/test.sh tests/test_kv.py`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
lcf models prepare --all
python -m pytest "$@"
