#!/usr/bin/env bash
# Set up (if needed) and run the demo on the real pair (Gemma-3-270M -> SmolLM2-135M-Instruct):
# train recipes/quickstart.yaml -> export the adapter -> load it through lcf.runtime -> answer a few
# questions -> print receiver alone vs receiver + adapter on the held-out split.
# Extra arguments are recipe overrides, e.g. `scripts/demo.sh trainer.max_steps=30`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
lcf models prepare --all
lcf demo recipes/quickstart.yaml "$@"
