"""trainer.strategy: validation and the errors users meet before any model is loaded."""
from __future__ import annotations

import datetime
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcf.config import load_recipe, validate_recipe
from lcf.errors import LCFError, RecipeError
from lcf.training.settings import TrainerSettings
from lcf.training.strategy import CODE_SUPPLIED, build_strategy, check_options

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
ZERO2, ZERO3 = REPO / "recipes" / "deepspeed_zero2.yaml", REPO / "recipes" / "deepspeed_zero3.yaml"
GPU = ["trainer.accelerator=gpu"]


def validate(path: Path, *overrides: str) -> dict:
    return validate_recipe(load_recipe(path, list(overrides)))


def test_unknown_strategy_fails_validation_with_suggestion():
    with pytest.raises(RecipeError, match="unknown strategy 'deepspeeed'.*Did you mean 'deepspeed'"):
        validate(QUICKSTART, "trainer.strategy=deepspeeed")


def test_deepspeed_recipe_validates_without_building():
    validate(QUICKSTART, *GPU, "trainer.strategy=deepspeed")
    validate(QUICKSTART, *GPU, "trainer.strategy={type: deepspeed, stage: 3, offload_optimizer: true}")


def test_shipped_deepspeed_recipes():
    for path, stage in ((ZERO2, 2), (ZERO3, 3)):
        trainer = validate(path)["trainer"]
        assert trainer["strategy"]["type"] == "deepspeed" and trainer["strategy"]["stage"] == stage
        assert (trainer["accelerator"], trainer["devices"], trainer["precision"]) == ("gpu", "auto", "bf16-mixed")
    validate(ZERO2, "trainer.strategy.stage=3", "trainer.strategy.offload_optimizer=true",
             "trainer.strategy.reduce_bucket_size=5.0e+8", "trainer.devices=8", "trainer.num_nodes=2")


def test_validation_does_not_import_deepspeed():
    code = (f"import sys; from lcf.config import load_recipe, validate_recipe; "
            f"validate_recipe(load_recipe({str(ZERO3)!r})); print('deepspeed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("override, message", [
    ("trainer.strategy.stage=1", r"trainer\.strategy\.stage: ZeRO stage 1 is not supported; use 2 .* or 3"),
    ("trainer.strategy.stage=4", r"trainer\.strategy\.stage: ZeRO stage 4 is not supported"),
    ("trainer.strategy.stgae=3", r"trainer\.strategy\.stgae: unknown option of the deepspeed strategy\. "
                                 r"Did you mean 'stage'\?.*Accepted: .*offload_optimizer"),
    ("trainer.strategy.offload_optimiser=true", r"offload_optimiser.*Did you mean 'offload_optimizer'"),
    ("trainer.strategy.offload_optimizer=maybe", r"trainer\.strategy\.offload_optimizer: expected bool, got str"),
    ("trainer.strategy.reduce_bucket_size=big", r"trainer\.strategy\.reduce_bucket_size: expected int"),
    ("trainer.strategy.timeout=soon", r"trainer\.strategy\.timeout: expected a number of seconds"),
    ("trainer.strategy.accelerator=gpu", r"trainer\.strategy\.accelerator: unknown option"),  # set by code
    ("trainer.accelerator=cpu", r"trainer\.strategy: deepspeed runs on CUDA GPUs but trainer\.accelerator is 'cpu'"
                                r".*trainer\.strategy: ddp"),
])
def test_bad_deepspeed_options_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message):
        validate(ZERO2, override)


def test_deepspeed_options_follow_lightnings_signature():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    names = set(inspect.signature(DeepSpeedStrategy.__init__).parameters) - {"self"} - CODE_SUPPLIED
    every = {n: inspect.signature(DeepSpeedStrategy.__init__).parameters[n].default for n in names}
    every["config"] = {"zero_optimization": {"stage": 2}}
    every["timeout"] = 1800
    converted = check_options("deepspeed", every)  # every keyword a recipe can give is accepted
    assert converted["timeout"] == datetime.timedelta(seconds=1800)
    assert {"stage", "offload_optimizer", "offload_parameters", "allgather_bucket_size", "reduce_bucket_size"} <= names
    assert check_options("deepspeed", {"allgather_bucket_size": 2.0e8}) == {"allgather_bucket_size": 200_000_000}


def test_ddp_options():
    strategy = {"type": "ddp", "find_unused_parameters": False, "timeout": 600, "bucket_cap_mb": 50}
    validate(QUICKSTART, f"trainer.strategy={strategy}")
    built = build_strategy(TrainerSettings(accelerator="cpu", strategy=strategy))
    assert type(built).__name__ == "DDPStrategy" and built._timeout == datetime.timedelta(seconds=600)
    assert built._ddp_kwargs == {"find_unused_parameters": False, "bucket_cap_mb": 50}
    with pytest.raises(RecipeError, match=r"trainer\.strategy\.find_unused_paramters.*Did you mean 'find_unused_parameters'"):
        validate(QUICKSTART, "trainer.strategy={type: ddp, find_unused_paramters: true}")
    with pytest.raises(RecipeError, match=r"trainer\.strategy\.start_method: unknown option of the ddp strategy"):
        validate(QUICKSTART, "trainer.strategy={type: ddp, start_method: fork}")


def test_strategy_mapping_needs_a_type():
    with pytest.raises(RecipeError, match=r"trainer\.strategy: a mapping needs `type:`.*Known: auto, ddp"):
        validate(QUICKSTART, "trainer.strategy={stage: 3}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_deepspeed_without_cuda_names_the_alternative():
    with pytest.raises(LCFError, match="needs CUDA GPUs.*trainer.strategy=ddp"):
        build_strategy(TrainerSettings(strategy="deepspeed"))


def test_deepspeed_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` raises ImportError
    with pytest.raises(LCFError, match=r"needs DeepSpeed, which is not installed: `pip install 'lcf\[deepspeed\]'`"):
        build_strategy(TrainerSettings(accelerator="gpu", strategy={"type": "deepspeed", "stage": 3}))


def test_plain_strategies_pass_through():
    assert build_strategy(TrainerSettings(strategy="ddp")) == "ddp"
    assert build_strategy(TrainerSettings()) == "auto"
    with pytest.raises(RecipeError, match="takes no options"):
        build_strategy(TrainerSettings(strategy={"type": "auto", "foo": 1}))


def test_deepspeed_helpers_read_the_strategy_config():
    from lcf.training.strategy import gathered, offloads_optimizer, register_gate_parameters, zero_stage

    def fake(zero: dict):
        return type("DeepSpeedStrategy", (), {"config": {"zero_optimization": zero}})()

    assert zero_stage(fake({"stage": 3})) == 3 and zero_stage("ddp") is None
    assert offloads_optimizer(fake({"stage": 2, "offload_optimizer": {"device": "cpu"}}))
    assert not offloads_optimizer(fake({"stage": 3})) and not offloads_optimizer(object())
    register_gate_parameters(torch.nn.Linear(2, 2), fake({"stage": 2}))  # not stage 3: nothing to do, no import
    assert "deepspeed" not in sys.modules
    params = list(torch.nn.Linear(2, 2).parameters())
    with gathered(params):  # plain (unpartitioned) parameters: a no-op
        assert params[0].shape == (2, 2)


def test_zero3_gate_logits_are_external_parameters_of_the_gates():
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: pip install 'lcf[deepspeed]'")
    from lcf.training.strategy import register_gate_parameters
    from lcf.translators.base import LayerGates

    def fake(stage: int):
        return type("DeepSpeedStrategy", (), {"config": {"zero_optimization": {"stage": stage}}})()

    model = torch.nn.Module()
    model.gates = LayerGates([0, 3, 5])
    register_gate_parameters(model, fake(2))
    assert not hasattr(model.gates, "_external_params")  # stage 2 does not partition parameters
    register_gate_parameters(model, fake(3))
    assert {id(p) for p in model.gates._external_params.values()} == {id(p) for p in model.gates.parameters()}
