"""`lcf export RUN_OR_CKPT OUT_DIR`: a standalone adapter folder.

    OUT_DIR/adapter.safetensors     translator tensors only
    OUT_DIR/adapter_config.json     everything needed to rebuild and check it (keys: lcf.runtime.KNOWN_KEYS)

The folder is written to a temporary sibling and renamed into place, so a reader never sees half an
adapter. Reading it needs only torch, transformers and safetensors (``lcf.runtime.load_adapter``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import lcf
from lcf.errors import LCFError
from lcf.models.fingerprint import fingerprint
from lcf.runtime import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME



def model_identity(loaded) -> dict[str, Any]:
    return {"name": loaded.name, "source": loaded.path, "fingerprint": fingerprint(loaded.model, loaded.tokenizer)}


def adapter_config(translator, *, translator_type: str, pair, recipe: dict, training: dict | None = None) -> dict:
    data = recipe.get("data") or {}
    return {
        "format_version": FORMAT_VERSION,
        "lcf_version": lcf.__version__,
        "translator": {"type": translator_type, "args": translator.init_args},
        "compressor": recipe.get("compressor"),
        "shapes": translator.shapes.to_dict(),
        "layer_map": {"spec": recipe.get("layer_map") or {"type": "terminal"}, "sharer_of": pair.layer_map.to_list()},
        "token_alignment": recipe.get("token_alignment") or {"type": "maximal_coverage"},
        "templates": {"receiver": data.get("receiver_template", "auto"), "sharer": data.get("sharer_template", "auto")},
        "sharer": model_identity(pair.sharer),
        "receiver": model_identity(pair.receiver),
        "dtype": str(next(translator.parameters()).dtype).replace("torch.", ""),
        "num_parameters": translator.num_parameters(),
        "size_bytes": translator.size_bytes(),
        "training": training or {},
    }


def write_adapter(out_dir: str | Path, translator, config: dict) -> Path:
    """Atomically write ``adapter.safetensors`` + ``adapter_config.json`` into ``out_dir``."""
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in translator.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "lcf_format_version": str(FORMAT_VERSION)})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=False))
        for f in tmp.iterdir():  # mkdtemp makes private files; an adapter is meant to be shared
            f.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _find_checkpoint(run_or_ckpt: Path, which: str) -> tuple[Path, Path]:
    """Return (checkpoint file, run dir)."""
    if run_or_ckpt.is_file():
        run = run_or_ckpt.parent.parent if run_or_ckpt.parent.name == "ckpt" else run_or_ckpt.parent
        return run_or_ckpt, run
    ckdir = run_or_ckpt / "ckpt"
    if not ckdir.is_dir():
        raise LCFError(f"{run_or_ckpt} is neither a checkpoint file nor a run directory with ckpt/ inside")
    best = sorted(p for p in ckdir.glob("*.ckpt") if p.name != "last.ckpt")
    if which == "best" and best:
        return best[-1], run_or_ckpt
    last = ckdir / "last.ckpt"
    if not last.exists():
        raise LCFError(f"no checkpoint in {ckdir}: train first (`lcf train RECIPE`)")
    return last, run_or_ckpt


def export(run_or_ckpt: str | Path, out_dir: str | Path, *, which: str = "best") -> Path:
    """Export the translator of a training run (or one checkpoint file) as an adapter folder."""
    from lcf.config import load_recipe, validate_recipe
    from lcf.pair import build_pair
    from lcf.training.run import build_translator

    ckpt_path, run = _find_checkpoint(Path(run_or_ckpt), which)
    recipe_file = run / "recipe.yaml"
    if not recipe_file.exists():
        raise LCFError(f"{recipe_file} is missing: export needs the resolved recipe that training saved beside ckpt/")
    recipe = validate_recipe(load_recipe(recipe_file), origin=str(recipe_file))
    pair = build_pair(recipe)
    translator = build_translator(recipe, pair)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    prefix = "communicator.translators.0."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    translator.load_state_dict(state, strict=True)
    summary_file = run / "summary.json"
    training = {
        "checkpoint": ckpt_path.name, "global_step": ckpt.get("global_step"), "recipe": recipe.get("name"),
        "data": recipe.get("data"), "trainer": recipe.get("trainer"), "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "torch": torch.__version__, "transformers": metadata.version("transformers"),
    }
    if summary_file.exists():
        training["summary"] = json.loads(summary_file.read_text())
    config = adapter_config(translator, translator_type=recipe["translator"]["type"], pair=pair, recipe=recipe,
                            training=training)
    return write_adapter(out_dir, translator, config)
