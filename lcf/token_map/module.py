"""The LightningModule of the per-token map: the frozen receiver reads the translated rows of a context.

    loss = answer_ce * CE(receiver's answer tokens | translated context) + rows_mse * mean((y_hat - y)^2 / var)

``y_hat`` = the map of the sharer's rows, placed (rotated) where the receiver's own cache of the context would
be; CE covers the answer's tokens and the end-of-turn token; ``var`` is the per-column variance of the
receiver's training rows, so every column weighs the same. Only the map trains; the receiver stays frozen and
out of the checkpoints. The optimiser and schedule are the trainer section's (``lr_schedule: constant`` and
``weight_decay: 0`` give plain Adam at a fixed rate).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from lcf.errors import LCFError
from lcf.models.kv import cache_kwargs
from lcf.models.rows import Rope, unflat_kv
from lcf.training.settings import TrainerSettings

class TokenMapModule(L.LightningModule):
    def __init__(self, translator: torch.nn.Module, receiver: Any, receiver_rope: Rope, settings: TrainerSettings,
                 weights: Mapping[str, float]):
        super().__init__()
        self.translator = translator
        self._receiver = [receiver]  # in a list: not a submodule, so neither trained nor checkpointed
        self.rope, self.settings, self.weights = receiver_rope, settings, dict(weights)
        self.register_buffer("variance", torch.ones(translator.y_mean.numel()), persistent=False)

    @property
    def receiver(self) -> Any:
        return self._receiver[0]

    def set_variance(self, variance: torch.Tensor) -> None:
        self.variance.copy_(variance.to(self.variance))

    def item_losses(self, f: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(answer CE, normalised rows MSE) of one item."""
        dtype = self.translator.y_mean.dtype
        x, y, p, ans = f["x"].to(dtype), f["y"].to(dtype), f["head"], f["answer"]
        rows = self.translator(x)
        mse = (((rows - y) ** 2) / self.variance).mean()
        if not self.weights["answer_ce"]:
            return mse.new_zeros(()), mse
        view, start = unflat_kv(rows, p, self.rope)
        ids = torch.cat([p.tail, ans])[None]
        model = self.receiver
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)[None]
        out = model(input_ids=ids, position_ids=pos, use_cache=True,
                    attention_mask=torch.ones(1, start + ids.shape[1], dtype=torch.long, device=ids.device),
                    **cache_kwargs(model, view.to_cache(model)))
        ce = torch.nn.functional.cross_entropy(out.logits[0, len(p.tail) - 1:-1].float(), ans)
        return ce, mse

    def _step(self, batch: list[dict], stage: str) -> torch.Tensor:
        ce = mse = 0.0
        for f in batch:
            c, m = self.item_losses(f)
            ce, mse = ce + c, mse + m
        ce, mse = ce / len(batch), mse / len(batch)
        loss = self.weights["answer_ce"] * ce + self.weights["rows_mse"] * mse
        sync = stage == "val"
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=sync)
        self.log(f"{stage}/answer_ce", ce.detach() if torch.is_tensor(ce) else ce, batch_size=len(batch),
                 sync_dist=sync)
        self.log(f"{stage}/rows_mse", mse.detach(), batch_size=len(batch), sync_dist=sync)
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
