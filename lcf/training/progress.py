"""A training progress bar counted in optimizer steps.

Training is bounded by ``trainer.max_steps`` (Lightning runs with ``max_epochs=-1``), so Lightning's
own bar shows "Epoch 0/-2" and a total that restarts every epoch. This one shows
``step 37/150 (epoch 1)`` on a single bar over the whole run, resumed runs included.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Rich progress bar whose training bar counts ``trainer.global_step`` up to ``trainer.max_steps``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("leave", False)  # one bar for the whole run, not one per epoch
        super().__init__(**kwargs)

    def _max_steps(self) -> int | None:
        steps = getattr(self.trainer, "max_steps", None)
        return steps if steps is not None and steps > 0 else None

    @property
    def total_train_batches(self) -> int | float:
        steps = self._max_steps()
        return steps if steps is not None else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        steps = self._max_steps()
        if steps is None:
            return super()._get_train_description(current_epoch)
        text = f"step {self.trainer.global_step}/{steps} (epoch {current_epoch})"
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) else text

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._show_step(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._show_step(trainer)

    def _show_step(self, trainer) -> None:
        if self._max_steps() is None or self.progress is None or self.train_progress_bar_id is None:
            return
        text = self._get_train_description(trainer.current_epoch)
        style = self.theme.description
        self.progress.update(self.train_progress_bar_id, completed=trainer.global_step,
                             description=f"[{style}]{text}" if style else text)
        self.refresh()
