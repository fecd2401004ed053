"""LoRA-tuned receiver: the control that tells transfer apart from adaptation.

`lcf train-lora RECIPE` trains a PEFT LoRA on the recipe's *receiver alone*, on the recipe's data, for
the recipe's steps, with about as many trainable parameters as the recipe's translator. If an
adapter beats this control, its gain is not explained by tuning the receiver to the data.
Output: ``<output_dir>/<name>-lora/lora/`` (a PEFT adapter folder) + ``summary.json``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch

from lcf.config import load_recipe, save_resolved, validate_recipe
from lcf.data.datamodule import InstructDataModule
from lcf.models.choices import choice_log_likelihoods, require_choices
from lcf.models.kv import cache_kwargs, extract_kv
from lcf.pair import build_pair
from lcf.training.options import option_terms
from lcf.training.run import build_data, build_translator, make_trainer, run_dir_of
from lcf.training.settings import TrainerSettings

log = logging.getLogger(__name__)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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

    def __init__(self, peft_model, settings: TrainerSettings, sharer: torch.nn.Module | None = None):
        super().__init__()
        self.model = peft_model
        self.settings = settings
        # the sharer answering alone, the teacher of trainer.sharer_option_weight (not a submodule: frozen, unsaved)
        self.__dict__["sharer"] = sharer

    def _loss(self, batch, stage: str = "train") -> torch.Tensor:
        """The response loss, plus the weighted option loss when the recipe asks for it (as LCFModule)."""
        loss = self._response_loss(batch)
        s, bs = self.settings, batch["response_ids"].shape[0]
        if stage == "val":  # val/loss is the response loss for every module, so runs compare
            self.log("val/loss", loss, prog_bar=True, batch_size=bs)
        if not s.uses_choices:
            return loss
        if self.sharer is not None and next(self.sharer.parameters()).device != batch["response_ids"].device:
            self.sharer.to(batch["response_ids"].device)
        extra, logs = option_terms(self._choice_ll(batch), batch, s, self.sharer)
        self.log(f"{stage}/response_loss", loss.detach(), batch_size=bs)
        for name, value in logs.items():
            self.log(f"{stage}/{name}", value, prog_bar=stage == "val" and name.endswith(("acc", "agree")), batch_size=bs)
        return loss + extra

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


def train_lora(recipe_path: str | Path, overrides=(), *, rank: int | None = None) -> Path:
    """Train the LoRA control for a recipe; return its run directory."""
    from peft import LoraConfig, get_peft_model

    cfg = load_recipe(recipe_path, overrides)
    recipe = validate_recipe(cfg, origin=str(recipe_path))
    settings = TrainerSettings(**(recipe.get("trainer") or {}))
    out = run_dir_of(recipe).with_name(f"{recipe.get('name') or 'run'}-lora")
    L.seed_everything(int(recipe.get("seed", 0)), workers=True, verbose=False)
    t0 = time.perf_counter()
    pair = build_pair(recipe, dtype=settings.model_dtype)
    target = build_translator(recipe, pair).num_parameters()
    receiver = pair.receiver.model
    rank = rank or matching_rank(receiver, target)
    peft_model = get_peft_model(receiver, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(TARGETS),
                                                     lora_dropout=0.0, bias="none"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    dm = InstructDataModule(build_data(recipe), pair.receiver.tokenizer, pair.sharer.tokenizer, pair.aligner,
                            batch_size=settings.batch_size, num_workers=settings.num_workers)
    # no Lightning checkpoints: they would hold the whole receiver; the PEFT folder is the output
    trainer = make_trainer(settings, out, callbacks=[], enable_checkpointing=False)
    save_resolved(cfg, out)
    teacher = pair.sharer.model if settings.sharer_option_weight > 0 else None
    if settings.contrast_weight > 0:
        log.warning("trainer.contrast_weight is ignored by the LoRA control: it compares sharer caches, and the "
                    "LoRA receiver reads none (its other losses are the translator's)")
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    trainer.fit(LoRAReceiverModule(peft_model, settings, teacher), datamodule=dm)
    if trainer.is_global_zero:
        peft_model.save_pretrained(out / "lora")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        (out / "summary.json").write_text(json.dumps({
            "recipe": str(recipe_path), "receiver": pair.receiver.name, "rank": rank, "trainable_parameters": trainable,
            "translator_parameters": target, "steps": trainer.global_step, "metrics": metrics,
            "seconds": round(time.perf_counter() - t0, 1),
        }, indent=2))
    return out
