"""LoRA-tuned receiver: the control that tells transfer apart from adaptation.

`lcf train-lora RECIPE` trains a PEFT LoRA on the recipe's *receiver alone*, on the recipe's data, for
the recipe's steps, with about as many trainable parameters as the recipe's translator. If an
adapter beats this control, its gain is not explained by tuning the receiver to the data.
Output: ``<output_dir>/<name>-lora/lora/`` (a PEFT adapter folder) + ``summary.json``. A recipe with a
``receiver_adapter:`` section gives the LoRA its rank, alpha and layers: the run is then "the LoRA alone" of that
composed recipe, and the first stage of its staged form (``init: {receiver_adapter: <output_dir>/<name>-lora}``).

It trains on the recipe's ``losses:`` that apply to a receiver alone (``response_ce``, ``option_ce``,
``sharer_option_ce``: components whose ``trainers`` name ``lora``). The others are left out with a warning:
``contrast`` compares sharer caches and ``gate_sparsity`` acts on gates; the LoRA receiver has neither.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from lcf.config import load_recipe, save_resolved, validate_recipe
from lcf.data.datamodule import InstructDataModule
from lcf.models.choices import choice_log_likelihoods, require_choices
from lcf.models.kv import cache_kwargs, extract_kv
from lcf.pair import build_pair
from lcf.runtime.receiver_lora import TARGETS
from lcf.training.loss import FUSED, LORA, Loss, apply_losses, build_losses, needs_choices
from lcf.training.run import build_data, build_translator, make_trainer, run_dir_of
from lcf.training.settings import TrainerSettings

log = logging.getLogger(__name__)


def lora_params_per_rank(model, targets=TARGETS) -> int:
    """Trainable LoRA parameters per unit of rank: sum of (in + out) over the targeted Linear layers."""
    return sum(m.in_features + m.out_features for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets)


def matching_rank(model, n_params: int, targets=TARGETS) -> int:
    per_rank = lora_params_per_rank(model, targets)
    if per_rank == 0:
        raise ValueError(f"the receiver has no Linear layers named {targets}; LoRA has nothing to adapt")
    return max(1, round(n_params / per_rank))


class LoRAReceiverModule(L.LightningModule):
    """Receiver-only next-token loss on response tokens (same batches as the translator's training)."""

    def __init__(self, peft_model, settings: TrainerSettings, sharer: torch.nn.Module | None = None,
                 losses: Sequence[Loss] | None = None):
        super().__init__()
        self.model = peft_model
        self.settings = settings
        # the sharer answering alone, the teacher of sharer_option_ce (not a submodule: frozen, unsaved)
        self.__dict__["sharer"] = sharer
        if losses is None:
            from lcf.training.loss_terms import ResponseCE

            losses = [ResponseCE()]
        self.losses = list(losses)

    def teacher(self) -> torch.nn.Module | None:
        """The sharer model (on this module's device), or None when the control was given none."""
        if self.sharer is not None and next(self.sharer.parameters()).device != self.device:
            self.sharer.to(self.device)
        return self.sharer

    def _loss(self, batch, stage: str = "train") -> torch.Tensor:
        """The weighted sum of the loss terms (as LCFModule, each logged); ``val/loss`` is the response loss."""
        bs = batch["response_ids"].shape[0]
        out = {"loss": self._response_loss(batch)}
        if needs_choices(self.losses):
            out["choice_ll"] = self._choice_ll(batch)
        total = apply_losses(self, self.losses, out, batch, stage, bs)
        if stage == "val":  # val/loss is the response loss for every module, so runs compare
            self.log("val/loss", out["loss"], prog_bar=True, batch_size=bs)
        return out["loss"] if total is None else total

    def _choice_ll(self, batch) -> torch.Tensor:
        """Every option's log-likelihood, the prompt run once (with LoRA) and its cache repeated per option."""
        from transformers import DynamicCache

        require_choices(batch)
        ids, mask = batch["receiver_prompt_ids"][:, :-1], batch["receiver_prompt_mask"][:, :-1]
        base = self.model.get_base_model()
        cache = DynamicCache(config=base.config)
        self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                   use_cache=True, logits_to_keep=1, **cache_kwargs(base, cache))
        return choice_log_likelihoods(self.model, extract_kv(cache, base.config, seq_len=ids.shape[1]), batch)

    def _response_loss(self, batch) -> torch.Tensor:
        p_ids, p_mask = batch["receiver_prompt_ids"], batch["receiver_prompt_mask"]
        r_ids, r_mask = batch["response_ids"], batch["response_mask"]
        ids = torch.cat([p_ids, r_ids], 1)
        mask = torch.cat([p_mask, r_mask], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        pred = logits[:, p_ids.shape[1] - 1:-1].float()  # predicts each response token
        loss = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), r_ids.reshape(-1), reduction="none")
        m = r_mask.reshape(-1).float()
        return (loss * m).sum() / m.sum().clamp(min=1)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch, "train")
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["response_ids"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        return self._loss(batch, "val")

    def configure_optimizers(self):
        s = self.settings
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        warmup = int(math.ceil(s.warmup_ratio * s.max_steps))

        def factor(step: int) -> float:
            return (step + 1) / warmup if step < warmup else max(0.0, (s.max_steps - step) / max(s.max_steps - warmup, 1))

        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor),
                                                   "interval": "step"}}


def control_losses(recipe: dict) -> list[Loss]:
    """The recipe's loss terms that a receiver alone can compute; the others are dropped with a warning."""
    terms = build_losses(recipe, FUSED)
    for t in terms:
        if LORA not in t.trainers:
            log.warning("losses: %s is left out of the LoRA control: it needs the sharer's cache or the translator's "
                        "gates, and the LoRA receiver has neither (its other terms are the translator's)", t.type_name)
    kept = [t for t in terms if LORA in t.trainers]
    if not any(t.weight > 0 for t in kept):
        from lcf.errors import RecipeError

        raise RecipeError("losses: none of this recipe's terms applies to the LoRA control (a receiver alone); add "
                          "{type: response_ce} or {type: option_ce}")
    return kept


def train_lora(recipe_path: str | Path, overrides=(), *, rank: int | None = None) -> Path:
    """Train the LoRA control for a recipe; return its run directory (``<name>-lora``), checked and locked for
    this training before any model loads, as ``lcf train`` locks its own (:mod:`lcf.run_lock`)."""
    from lcf.paths import check_output_path
    from lcf.run_lock import run_folder_lock

    recipe = validate_recipe(load_recipe(recipe_path, overrides), origin=str(recipe_path))
    out = run_dir_of(recipe).with_name(f"{recipe.get('name') or 'run'}-lora")
    check_output_path(out, "LoRA control run folder (output_dir/<name>-lora)")
    with run_folder_lock(out):
        return _train_lora(recipe_path, overrides, out, rank=rank)


def _train_lora(recipe_path: str | Path, overrides, out: Path, *, rank: int | None) -> Path:
    from peft import LoraConfig, get_peft_model

    from lcf.training.receiver_adapter import control_lora_settings

    cfg = load_recipe(recipe_path, overrides)
    recipe = validate_recipe(cfg, origin=str(recipe_path))
    settings = TrainerSettings(**(recipe.get("trainer") or {}))
    L.seed_everything(int(recipe.get("seed", 0)), workers=True, verbose=False)
    t0 = time.perf_counter()
    pair = build_pair(recipe, dtype=settings.model_dtype)
    target = build_translator(recipe, pair).num_parameters()
    receiver = pair.receiver.model
    matched = matching_rank(receiver, target) if not (rank or recipe.get("receiver_adapter")) else 0
    rank, alpha, targets = control_lora_settings(recipe, rank, matched)
    peft_model = get_peft_model(receiver, LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets,
                                                     lora_dropout=0.0, bias="none"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    dm = InstructDataModule(build_data(recipe), pair.receiver.tokenizer, pair.sharer.tokenizer, pair.aligner,
                            batch_size=settings.batch_size, num_workers=settings.num_workers)
    # no Lightning checkpoints: they would hold the whole receiver; the PEFT folder is the output
    trainer = make_trainer(settings, out, callbacks=[], enable_checkpointing=False)
    save_resolved(cfg, out)
    terms = control_losses(recipe)
    teacher = pair.sharer.model if any(t.needs_teacher and t.weight > 0 for t in terms) else None
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    trainer.fit(LoRAReceiverModule(peft_model, settings, teacher, terms), datamodule=dm)
    if trainer.is_global_zero:
        peft_model.save_pretrained(out / "lora")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        (out / "summary.json").write_text(json.dumps({
            "recipe": str(recipe_path), "receiver": pair.receiver.name, "rank": rank, "alpha": alpha, "target_modules": targets,
            "trainable_parameters": trainable,
            "translator_parameters": target, "steps": trainer.global_step, "metrics": metrics,
            "seconds": round(time.perf_counter() - t0, 1),
        }, indent=2))
    return out
