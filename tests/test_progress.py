"""The training progress bar counts optimizer steps (Lightning's says "Epoch 0/-2" under max_steps)."""
from __future__ import annotations

from types import SimpleNamespace

from lcf.training.progress import StepProgressBar


def test_step_bar_shows_steps_of_max_steps():
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_steps=150, global_step=37, max_epochs=-1, num_training_batches=12)
    assert bar.total_train_batches == 150
    text = bar._get_train_description(3)
    assert text.strip() == "step 37/150 (epoch 3)" and "-2" not in text


def test_step_bar_falls_back_to_epochs_without_max_steps():
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_steps=-1, global_step=5, max_epochs=3, num_training_batches=12)
    assert bar.total_train_batches == 12
    assert bar._get_train_description(1).strip() == "Epoch 1/2"
