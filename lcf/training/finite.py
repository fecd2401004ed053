"""Stop training at the first optimizer step that leaves a trainable parameter NaN or infinite.

Runs after each training batch and before the checkpoint callbacks (Lightning moves those last), so a
non-finite state is never saved and the checkpoint the message names is the last finite one."""
from __future__ import annotations

import lightning as L

from lcf.guards import describe_names, nonfinite_tensors


def last_good_checkpoint(trainer: L.Trainer | None) -> str:
    """Path of the newest checkpoint saved so far (every saved one passed this guard), or 'none saved yet'."""
    callback = trainer.checkpoint_callback if trainer is not None else None
    return getattr(callback, "last_model_path", "") or "none saved yet"


class FiniteGuard(L.Callback):
    """Raise :class:`lcf.training.module.NonFiniteLossError` once trainable parameters stop being finite."""

    def __init__(self) -> None:
        self._checked_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.global_step == self._checked_step:  # no optimizer step since the last check (accumulation)
            return
        self._checked_step = trainer.global_step
        named = ((n, p.detach()) for n, p in pl_module.named_parameters() if p.requires_grad)
        bad = nonfinite_tensors(named)
        if bad:
            from lcf.training.module import NonFiniteLossError

            raise NonFiniteLossError(
                f"parameters became NaN or infinite at global step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}, batch {batch_idx}): {describe_names(bad)}; training stopped and this "
                f"state was not saved. Last good checkpoint: {last_good_checkpoint(trainer)}. Lower trainer.lr (or "
                f"set trainer.grad_clip), check that batch's data, or resume from that checkpoint."
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        bad = nonfinite_tensors(checkpoint.get("state_dict") or {})
        if bad:  # never reached after the batch check above; kept as the last line of defence
            from lcf.training.module import NonFiniteLossError

            raise NonFiniteLossError(
                f"refusing to save a checkpoint at global step {trainer.global_step}: {describe_names(bad)} hold "
                f"NaN or infinite values. Last good checkpoint: {last_good_checkpoint(trainer)}."
            )

