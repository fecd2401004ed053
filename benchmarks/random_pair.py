"""Random-weight copies of prepared models, for timing on a machine that cannot get the real weights.

    python benchmarks/random_pair.py SRC [--seed 0]

``SRC`` holds one folder per model card (e.g. ``SRC/gemma3-270m/``) with the prepared checkpoint's
``config.json`` and tokenizer files but no weights (copy them from ``lcf models prepare``'s cache,
leaving out ``model.safetensors``). Each is written to lcf's cache (``$LCF_CACHE``, see
:func:`lcf.models.loading.cache_root`) with weights drawn by the architecture's own initialiser, so
recipes that name the cards load them as if prepared. Step time, memory and kernel counts do not
depend on the weight values; accuracy does, so never evaluate such a cache. ``tokenizer.json.gz`` is
unpacked (a 262k-word tokenizer is 33 MB).
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import torch

from lcf.models.loading import PREPARE_FORMAT, STAMP, cache_root


def materialise(src: Path, out: Path, seed: int) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name.endswith(".gz"):
            with gzip.open(f, "rb") as fin, open(out / f.name[:-3], "wb") as fout:
                shutil.copyfileobj(fin, fout)
        elif f.name not in ("model.safetensors", STAMP):
            shutil.copy(f, out / f.name)
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    (out / STAMP).write_text(json.dumps({"format": PREPARE_FORMAT, "card": src.name, "random_weights": True,
                                         "seed": seed}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="a folder with one config + tokenizer folder per card name")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    folders = sorted(p for p in args.src.iterdir() if (p / "config.json").exists())
    if not folders:
        raise SystemExit(f"{args.src} has no <card name>/config.json folders; copy them from `lcf models prepare`'s "
                         f"cache ({cache_root() / 'models'}) without model.safetensors")
    for folder in folders:
        out = cache_root() / "models" / folder.name
        materialise(folder, out, args.seed)
        print(f"{folder.name}: random weights in {out}")


if __name__ == "__main__":
    main()
