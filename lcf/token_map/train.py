"""``lcf train`` for the per-token map: the init stage, then the Lightning trainer.

    pair -> TokenMap(shapes, rank) -> init (ridge fit or an earlier map; stored in <run>/init/) ->
    rows of the training items (in memory) -> Lightning fit (checkpoints, --resume, DDP) -> summary.json

Called by :func:`lcf.training.run.train` when the recipe's translator is per-token (``adapter_kind = "per_token"``).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lcf.errors import RecipeError
from lcf.registry import translators
from lcf.training.settings import TrainerSettings


def build_token_map(recipe: dict[str, Any], pair: Any) -> Any:
    from lcf.translators.base import PairShapes

    shapes = PairShapes.from_configs(pair.sharer.model.config, pair.receiver.model.config, pair.layer_map)
    return translators.build(recipe["translator"], "translator", shapes=shapes)


def train_token_map(recipe: dict[str, Any], recipe_path: str | Path, settings: TrainerSettings, out: Path, *,
                    resume: bool, data: Any, new_trainer: Callable[[], Any]) -> Path:
    """Train the recipe's map into ``out``: ``data`` is the recipe's dataset, ``new_trainer()`` the run's
    Lightning Trainer (checkpoints, resume, loggers) as :func:`lcf.training.run.train` sets it up."""
    from lcf.pair import build_pair
    from lcf.token_map.data import TokenRowsDataModule
    from lcf.token_map.init import initialise
    from lcf.training.loss import TOKEN_MAP, build_losses
    from lcf.token_map.module import TokenMapModule
    from lcf.token_map.rows import TokenRows

    if not recipe.get("init") and not resume:
        raise RecipeError("init: a token_map starts from a fitted map; add `init: {type: ridge, fit: [...]}` or "
                          "`init: {from: RUN_OR_ADAPTER}` (a map of zeros has no gradient)")
    t0 = time.perf_counter()
    pair = build_pair(recipe, dtype=settings.model_dtype)
    translator = build_token_map(recipe, pair)
    rows = TokenRows(pair.receiver.model, pair.receiver.tokenizer, pair.sharer.model, pair.sharer.tokenizer,
                     template=getattr(data, "receiver_template", "auto"),
                     sharer_template=getattr(data, "sharer_template", "auto"))
    identity = {"sharer": pair.sharer.name, "receiver": pair.receiver.name}
    init_report = (initialise(recipe["init"], translator, rows, out, recipe.get("data_root"), identity)
                   if recipe.get("init") else {})
    dm = TokenRowsDataModule(data, rows, settings.batch_size, seed=int(recipe.get("seed", 0)),
                             rows_dtype=getattr(data, "rows_dtype", "float16"))
    dm.setup("fit")
    module = TokenMapModule(translator, pair.receiver.model, rows.receiver_rope, settings,
                            build_losses(recipe, TOKEN_MAP))
    module.set_variance(dm.receiver_variance(translator.y_mean))
    prepared = time.perf_counter() - t0
    trainer = new_trainer()
    last = out / "ckpt" / "last.ckpt"
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        row_bytes = sum(f["x"].numel() * f["x"].element_size() + f["y"].numel() * f["y"].element_size()
                        for f in dm.train_features + dm.val_features)
        summary = {
            "recipe": str(recipe_path), "name": recipe.get("name"), "steps": trainer.global_step,
            "seconds": round(time.perf_counter() - t0, 1), "seconds_before_fit": round(prepared, 1),
            "metrics": metrics, "translator": translator.init_args | {"type": recipe["translator"]["type"]},
            "num_parameters": translator.num_parameters(), "init": init_report,
            "train_examples": len(dm.train_features), "val_examples": len(dm.val_features),
            "skipped_too_long": dm.skipped, "rows_in_memory_bytes": row_bytes,
            "data_sets": getattr(data, "used", None),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    trainer.strategy.barrier("lcf-summary")
    return out
