"""The LightningModule of the per-token map: the frozen receiver reads the translated rows of a context.

    loss = sum of the recipe's weighted loss components (lcf.token_map.losses), by default
         1.0 * answer_ce (CE of the receiver's answer tokens | translated context) + 1.0 * rows_mse (mean((y_hat - y)^2 / var))

``y_hat`` = the map of the sharer's rows, placed (rotated) where the receiver's own cache of the context would
be; CE covers the answer's tokens and the end-of-turn token; ``var`` is the per-column variance of the
receiver's training rows, so every column weighs the same. Only the map trains; the receiver stays frozen and
out of the checkpoints. The optimiser and schedule are the trainer section's (``lr_schedule: constant`` and
``weight_decay: 0`` give plain Adam at a fixed rate).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from lcf.errors import LCFError
from lcf.models.rows import Rope
from lcf.training.loss import Loss, apply_losses
from lcf.training.settings import TrainerSettings


class TokenMapModule(L.LightningModule):
    def __init__(self, translator: torch.nn.Module, receiver: Any, receiver_rope: Rope, settings: TrainerSettings,
                 losses: Sequence[Loss]):
        super().__init__()
        self.translator = translator
        self._receiver = [receiver]  # in a list: not a submodule, so neither trained nor checkpointed
        self.rope, self.settings, self.losses = receiver_rope, settings, list(losses)
        self.register_buffer("variance", torch.ones(translator.y_mean.numel()), persistent=False)

    @property
    def receiver(self) -> Any:
        return self._receiver[0]

    def set_variance(self, variance: torch.Tensor) -> None:
        self.variance.copy_(variance.to(self.variance))

    def translate(self, f: dict) -> torch.Tensor:
        """The map's rows of one item's sharer rows ``f["x"]``."""
        return self.translator(f["x"].to(self.translator.y_mean.dtype))

    def item_losses(self, f: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(answer CE, normalised rows MSE) of one item, unweighted."""
        from lcf.token_map.losses import item_answer_ce, item_rows_mse

        rows = self.translate(f)
        return item_answer_ce(self, rows, f), item_rows_mse(self, rows, f)

    def _step(self, batch: list[dict], stage: str) -> torch.Tensor:
        out = {"rows": [self.translate(f) for f in batch]}
        loss = apply_losses(self, self.losses, out, batch, stage, len(batch))
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=stage == "val")
        return loss

    def training_step(self, batch: list[dict], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            from lcf.training.module import NonFiniteLossError

            callback = self.trainer.checkpoint_callback if self._trainer is not None else None
            keep = getattr(callback, "last_model_path", "") or "none saved yet"
            raise NonFiniteLossError(f"training loss is {loss.item()} at global step {self.global_step}; training "
                                     f"stopped. Last good checkpoint: {keep}. Lower trainer.lr or check the data.")
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=len(batch))
        return loss

    def validation_step(self, batch: list[dict], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lcf_settings"] = self.settings.to_dict()

    def configure_optimizers(self) -> Any:
        from lcf.training.module import optimizer_and_schedule

        params = [p for p in self.translator.parameters() if p.requires_grad]
        if not params:
            raise LCFError("the per-token map has no trainable parameters")
        return optimizer_and_schedule(self, params, [])
