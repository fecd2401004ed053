"""Peak resident memory (RSS) of quickstart training, measured on a short run in a child process.

    python benchmarks/train_memory.py [--steps 10] [--recipe recipes/quickstart.yaml]

The child's peak RSS (ru_maxrss of the finished child) includes both frozen LLMs, the translator,
its optimizer state and activations. Target: <= 6 GiB.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "lcf.cli", "train", args.recipe, f"trainer.max_steps={args.steps}",
               "trainer.val_every_n_steps=5", "trainer.limit_val_batches=2", "trainer.progress=none",
               f"output_dir={out}", "name=memory-benchmark"]
        subprocess.run(cmd, check=True, env=dict(os.environ), stdout=subprocess.DEVNULL)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    gib = peak_kib / 2**20
    print(f"peak RSS of `lcf train {args.recipe}` ({args.steps} steps incl. validation): {gib:.2f} GiB "
          f"(target <= 6 GiB: {'met' if gib <= 6 else 'NOT met'})")


if __name__ == "__main__":
    main()
