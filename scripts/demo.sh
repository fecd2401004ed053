#!/usr/bin/env bash
# Set up (if needed) and run the demo on the real pair (Gemma-3-270M -> SmolLM2-135M-Instruct).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
lcf models prepare --all
lcf validate recipes/*.yaml
lcf inspect recipes/inspect.yaml "$@"
