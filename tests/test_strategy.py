"""trainer.strategy: validation and the errors users meet before any model is loaded."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lcf.config import load_recipe, validate_recipe
from lcf.errors import LCFError, RecipeError
from lcf.training.settings import TrainerSettings
from lcf.training.strategy import build_strategy

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"


def test_unknown_strategy_fails_validation_with_suggestion():
    with pytest.raises(RecipeError, match="unknown strategy 'deepspeeed'.*Did you mean 'deepspeed'"):
        validate_recipe(load_recipe(QUICKSTART, ["trainer.strategy=deepspeeed"]))


def test_deepspeed_recipe_validates_without_building():
    validate_recipe(load_recipe(QUICKSTART, ["trainer.strategy=deepspeed"]))
    validate_recipe(load_recipe(QUICKSTART, ["trainer.strategy={type: deepspeed, stage: 3, offload_optimizer: true}"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_deepspeed_without_cuda_names_the_alternative():
    with pytest.raises(LCFError, match="needs CUDA GPUs.*trainer.strategy=ddp"):
        build_strategy(TrainerSettings(strategy="deepspeed"))


def test_plain_strategies_pass_through():
    assert build_strategy(TrainerSettings(strategy="ddp")) == "ddp"
    assert build_strategy(TrainerSettings()) == "auto"
    with pytest.raises(RecipeError, match="takes no options"):
        build_strategy(TrainerSettings(strategy={"type": "auto", "foo": 1}))
