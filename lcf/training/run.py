"""`lcf train RECIPE`: build the pair, data and translator from a recipe and fit with Lightning.

Outputs go to ``<output_dir>/<name>/``: ``recipe.yaml`` (resolved), ``ckpt/`` (``last.ckpt`` and the
best validation checkpoint), ``logs/`` (CSV, optionally TensorBoard) and ``summary.json``.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lcf.communicator import Communicator
from lcf.config import load_recipe, save_resolved, validate_recipe
from lcf.data.datamodule import InstructDataModule
from lcf.several.datamodule import SeveralSharersDataModule
from lcf.errors import LCFError, RecipeError
from lcf.pair import Pair, build_pair
from lcf.registry import compressors, datasets, translators
from lcf.several import build_pairs, build_translators, has_several, sharer_entries
from lcf.training.loss import FUSED, build_losses
from lcf.training.module import LCFModule
from lcf.training.settings import TrainerSettings
from lcf.translators.base import PairShapes

log = logging.getLogger(__name__)


def run_dir_of(recipe: dict[str, Any]) -> Path:
    name = recipe.get("name") or "run"
    return Path(recipe.get("output_dir") or "checkpoints") / str(name)


def build_translator(recipe: dict[str, Any], pair: Pair):
    shapes = PairShapes.from_configs(pair.sharer.model.config, pair.receiver.model.config, pair.layer_map)
    if not recipe.get("translator"):
        raise RecipeError("translator: missing; e.g. `translator: {type: lcf_lowrank, rank: 128}`")
    return translators.build(recipe["translator"], "translator", shapes=shapes)


def build_compressor(recipe: dict[str, Any], pair: Pair):
    """The recipe's ``compressor:`` (cross-context sharers), or None."""
    if not recipe.get("compressor"):
        return None
    shapes = PairShapes.from_configs(pair.sharer.model.config, pair.receiver.model.config, pair.layer_map)
    return compressors.build(recipe["compressor"], "compressor", shapes=shapes)


def build_data(recipe: dict[str, Any]):
    spec = dict(recipe.get("data") or {})
    if not spec:
        raise RecipeError("data: missing; e.g. `data: {type: instruct_json, files: [instruct/alpaca_en_demo_llamafactory.json]}`")
    if "data_root" not in spec and recipe.get("data_root"):
        spec["data_root"] = str(recipe["data_root"])
    return datasets.build(spec, "data")


def _log_version(out: Path, resume: bool) -> str:
    """'' for a fresh run (logs/metrics.csv); 'resume_N' for the N-th resumption, so no log is overwritten."""
    if not resume:
        return ""
    n = 1
    while (out / "logs" / f"resume_{n}").exists():
        n += 1
    return f"resume_{n}"


def _loggers(settings: TrainerSettings, out: Path, version: str = "") -> list:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = []
    if settings.logger in ("csv", "both"):
        loggers.append(CSVLogger(save_dir=str(out), name="logs", version=version))
    if settings.logger in ("tensorboard", "both"):
        try:
            import tensorboard  # noqa: F401
        except ImportError as exc:
            raise LCFError("trainer.logger=tensorboard needs `pip install tensorboard` (or use logger: csv)") from exc
        loggers.append(TensorBoardLogger(save_dir=str(out), name="tb", version=version))
    return loggers


def _callbacks(settings: TrainerSettings, out: Path) -> list:
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from lcf.training.progress import StepProgressBar

    # `last.ckpt` every checkpoint_every_n_steps (for --resume), and the best weights by validation loss,
    # saved right after each validation so the name's loss belongs to those weights. (A step-triggered
    # monitored checkpoint fires before that step's validation and would carry the previous loss.)
    last = ModelCheckpoint(dirpath=str(out / "ckpt"), save_top_k=0, save_last=True,
                           every_n_train_steps=settings.checkpoint_every_n_steps)
    best = ModelCheckpoint(dirpath=str(out / "ckpt"), filename="step{step}-val{val/loss:.4f}",
                           auto_insert_metric_name=False, monitor="val/loss", mode="min", save_top_k=1)
    cbs = [last, best]  # the first is trainer.checkpoint_callback (its last_model_path names the last good one)
    from lcf.training.resume import RNGState

    cbs.append(RNGState())  # RNG states in every checkpoint: --resume continues as the uninterrupted run
    from lcf.training.finite import FiniteGuard

    cbs.append(FiniteGuard())  # stops at the first non-finite parameter, before any checkpoint saves it
    if settings.progress == "rich":
        cbs.append(StepProgressBar())  # counts steps: Lightning's own bar says "Epoch 0/-2" under max_steps
    del LearningRateMonitor  # the module logs train/lr itself
    return cbs


class _SaveRecipe(L.Callback):
    """Write the resolved recipe from global rank 0 once the job is set up (before that, the
    processes Lightning launches itself all believe they are rank 0)."""

    def __init__(self, cfg: Any, out: Path) -> None:
        self.cfg, self.out = cfg, out

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            save_resolved(self.cfg, self.out)


def make_trainer(settings: TrainerSettings, out: Path, *, resume: bool = False, **overrides) -> L.Trainer:
    from lcf.training.strategy import build_strategy

    kwargs = dict(
        max_steps=settings.max_steps,
        accumulate_grad_batches=settings.accumulate_grad_batches,
        gradient_clip_val=settings.grad_clip or None,
        precision=settings.precision,
        accelerator=settings.accelerator,
        devices=settings.devices,
        num_nodes=settings.num_nodes,
        strategy=build_strategy(settings),
        val_check_interval=settings.val_every_n_steps,
        check_val_every_n_epoch=None,
        limit_val_batches=settings.limit_val_batches,
        log_every_n_steps=settings.log_every_n_steps,
        logger=_loggers(settings, out, _log_version(out, resume)) or False,
        callbacks=_callbacks(settings, out),
        enable_progress_bar=settings.progress != "none",
        default_root_dir=str(out),
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    kwargs.update(overrides)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**kwargs)
    except MisconfigurationException as exc:  # e.g. accelerator=cuda on a machine without a GPU
        raise LCFError(f"trainer: {exc} Set trainer.accelerator / trainer.devices to what this machine has "
                       f"(e.g. trainer.accelerator=cpu, or auto).") from exc


def _check_readable(ckpt: Path) -> None:
    """Refuse a truncated or corrupted checkpoint file (a torch zip archive) before any model is loaded."""
    if ckpt.is_dir():  # a DeepSpeed ZeRO checkpoint directory: DeepSpeed checks its own shards
        return
    import zipfile

    try:
        with zipfile.ZipFile(ckpt) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        bad = f"{type(exc).__name__}: {exc}"
    if bad:
        raise LCFError(f"--resume: {ckpt} is truncated or corrupted ({bad}); copy another checkpoint of ckpt/ to "
                       f"last.ckpt, or train again without --resume")


def train(recipe_path: str | Path, overrides: list[str] | tuple = (), *, resume: bool = False) -> Path:
    """Train the recipe; return the run directory. The run folder is checked (writable, not a link loop)
    and locked for this training before any model loads (:mod:`lcf.run_lock`)."""
    from lcf.paths import check_output_path
    from lcf.run_lock import run_folder_lock

    out = run_dir_of(validate_recipe(load_recipe(recipe_path, overrides), origin=str(recipe_path)))
    check_output_path(out, "run folder (output_dir/name)")
    with run_folder_lock(out, resume=resume):
        return _train(recipe_path, overrides, resume=resume)


def _train(recipe_path: str | Path, overrides: list[str] | tuple = (), *, resume: bool = False) -> Path:
    cfg = load_recipe(recipe_path, overrides)
    recipe = validate_recipe(cfg, origin=str(recipe_path))
    settings = TrainerSettings(**(recipe.get("trainer") or {}))
    out = run_dir_of(recipe)
    last = out / "ckpt" / "last.ckpt"
    if resume and not last.exists():
        raise LCFError(f"--resume: no checkpoint at {last}; train without --resume first")
    if resume:
        _check_readable(last)
    from lcf.training.receiver_adapter import check_init_source

    check_init_source(recipe)  # a staged receiver LoRA's first stage exists (before any model loads)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    L.seed_everything(int(recipe.get("seed", 0)), workers=True, verbose=False)
    from lcf.runtime.kinds import PER_TOKEN, adapter_kind

    def new_trainer() -> L.Trainer:  # checkpoints, resume, loggers, and the resolved recipe saved from rank 0
        return make_trainer(settings, out, resume=resume, callbacks=[*_callbacks(settings, out), _SaveRecipe(cfg, out)])

    if recipe.get("translator") and adapter_kind(recipe["translator"]["type"]) == PER_TOKEN:
        from lcf.token_map.train import train_token_map  # per-token rows, not a fused cache edit

        return train_token_map(recipe, recipe_path, settings, out, resume=resume, data=build_data(recipe),
                               new_trainer=new_trainer)
    t0 = time.perf_counter()
    if has_several(recipe):  # `sharers:` list: one pair (sharer, layer map, aligner) and translator per sharer
        pairs = build_pairs(recipe, dtype=settings.model_dtype)
        all_translators = build_translators(recipe, pairs)
    else:
        pairs = [build_pair(recipe, dtype=settings.model_dtype)]
        all_translators = [build_translator(recipe, pairs[0])]
    pair, translator = pairs[0], all_translators[0]
    data = build_data(recipe)
    if len(pairs) > 1:
        dm = SeveralSharersDataModule(data, pair.receiver.tokenizer, [p.sharer.tokenizer for p in pairs],
                                      [p.aligner for p in pairs], batch_size=settings.batch_size,
                                      sharer_templates=[e["sharer_template"] for e in sharer_entries(recipe)],
                                      num_workers=settings.num_workers)
    else:
        dm = InstructDataModule(data, pair.receiver.tokenizer, pair.sharer.tokenizer, pair.aligner,
                                batch_size=settings.batch_size, num_workers=settings.num_workers)
    compressor = build_compressor(recipe, pair)
    xc_data = hasattr(data, "split_examples")  # lcf.data.xc.dataset.XCData
    if xc_data != (compressor is not None):
        raise RecipeError(
            "compressor: cross-context data (the sharer reads its own context) needs a `compressor:` such as "
            "{type: span_pool}, and a compressor needs cross-context data (e.g. data.type=fact_transfer); this "
            f"recipe has data.type={recipe['data'].get('type')!r} and "
            f"{'a' if compressor is not None else 'no'} compressor"
        )
    if compressor is not None:
        limit, asked = compressor.context_limit(pair.sharer.model.config), getattr(data, "max_context_tokens", None)
        if asked is not None and asked > limit:
            raise RecipeError(
                f"data.max_context_tokens={asked} exceeds what the compressor summarises ({limit} tokens: "
                f"lcf.compressors.base.CONTEXT_LIMIT or the sharer's maximum positions); set "
                f"data.max_context_tokens<={limit}"
            )
    from lcf.training.receiver_adapter import build_receiver_adapter

    receiver_adapter = build_receiver_adapter(recipe, pair.receiver.model)  # a receiver LoRA, or None
    comm = Communicator(pair.receiver.model, [p.sharer.model for p in pairs], all_translators,
                        combine=settings.combine, compressors=[compressor] + [None] * (len(pairs) - 1),
                        receiver_adapter=receiver_adapter)
    module = LCFModule(comm, settings, build_losses(recipe, FUSED))
    # counted before ZeRO-3 may partition the parameters
    num_parameters = (sum(t.num_parameters() for t in all_translators)
                      + (compressor.num_parameters() if compressor is not None else 0)
                      + (receiver_adapter.num_parameters() if receiver_adapter is not None else 0))
    trainer = new_trainer()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        summary = {
            "recipe": str(recipe_path), "name": recipe.get("name"), "steps": trainer.global_step,
            "seconds": round(time.perf_counter() - t0, 1), "metrics": metrics,
            "translator": translator.init_args | {"type": recipe["translator"]["type"]},
            "num_parameters": num_parameters, "train_examples": len(dm.train_features),
            "receiver_adapter": receiver_adapter.config_record() if receiver_adapter is not None else None,
            "val_examples": len(dm.val_features),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    trainer.strategy.barrier("lcf-summary")  # other ranks return once rank 0 has written its files
    return out
