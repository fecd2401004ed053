"""Loss components: the `losses:` recipe section, its validation, user-registered terms, the moved trainer keys."""
from __future__ import annotations

import csv
import logging

import pytest
import torch

from lcf.config import load_recipe, validate_recipe
from lcf.errors import RecipeError
from lcf.registry import losses
from lcf.training.loss import Loss, build_losses
from lcf.training.lora import control_losses
from lcf.training.run import train
from lcf.training.settings import TrainerSettings
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (tiny_pair is a fixture)


class ParameterL2(Loss):
    """A user's term: the squared norm of the translators' parameters (a plain weight decay as a loss)."""

    log_name = "param_l2"

    def __call__(self, module, out, batch):
        return sum(p.pow(2).sum() for tr in module.communicator.translators for p in tr.parameters()), {}


@losses.register("test_response_twice")
class ResponseTwice(Loss):
    """A registered user term with its own argument."""

    log_name = "response_twice"

    def __init__(self, weight: float = 1.0, factor: float = 2.0):
        super().__init__(weight)
        self.factor = factor

    def __call__(self, module, out, batch):
        return self.factor * out["loss"], {"response_twice_factor": torch.tensor(self.factor)}


class NotALoss:
    def __call__(self, module, out, batch):
        return out["loss"], {}


def check(path, *overrides):
    return validate_recipe(load_recipe(path, list(overrides)))


def test_a_recipe_trains_on_a_user_loss_by_dotted_path(tiny_pair, tmp_path):  # noqa: F811
    extra = "losses: [{type: response_ce}, {type: tests.test_losses.ParameterL2, weight: 0.001}]\n"
    run = train(recipe(tiny_pair, tmp_path / "runs", extra=extra), ["trainer.max_steps=2"])
    with open(run / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert rows and all(r.get("train/param_l2") and r.get("train/response_loss") for r in rows)
    for r in rows:  # the trainer's loss is the weighted sum of the terms it logs
        total = float(r["train/response_loss"]) + 0.001 * float(r["train/param_l2"])
        assert float(r["train/loss"]) == pytest.approx(total, rel=1e-5)


def test_a_registered_loss_is_named_in_the_recipe_and_checked():
    terms = build_losses(check("recipes/quickstart.yaml", "losses=[{type: test_response_twice, factor: 3.0}]"))
    assert [(type(t), t.weight, t.factor) for t in terms] == [(ResponseTwice, 1.0, 3.0)]
    with pytest.raises(RecipeError, match=r"losses\[0\].factr: ResponseTwice has no argument 'factr'. Did you mean "
                                          r"'factor'"):
        check("recipes/quickstart.yaml", "losses=[{type: test_response_twice, factr: 3.0}]")
    with pytest.raises(RecipeError, match=r"losses\[0\].factor: expected float, got str"):
        check("recipes/quickstart.yaml", "losses=[{type: test_response_twice, factor: big}]")
    with pytest.raises(RecipeError, match="not a loss component; derive a class from lcf.training.loss.Loss"):
        check("recipes/quickstart.yaml", "losses=[{type: tests.test_losses.NotALoss}]")


@pytest.mark.parametrize("terms, message", [
    ("[{type: response_cee}]", r"losses\[0\].type: unknown loss 'response_cee'. Did you mean 'response_ce'"),
    ("[{weight: 1.0}]", r"losses\[0\]: missing 'type'"),
    ("[{type: response_ce, weight: -1}]", r"losses\[0\] \(response_ce\): weight must be a finite number >= 0"),
    ("[{type: response_ce, weight: .inf}]", r"weight must be a finite number >= 0"),
    ("[{type: response_ce, weight: 0}]", "every weight is 0"),
    ("[]", "every weight is 0"),
    ("[{type: response_ce}, {type: response_ce}]", r"losses\[1\]: a second 'response_ce' term"),
    ("[{type: response_ce}, {type: option_ce, score: mean}]", r"losses\[1\].score: expected Literal"),
    ("[{type: response_ce}, {type: option_ce}]", r"losses\[1\]: option_ce scores every option .* data.choices: true"),
    ("[{type: response_ce}, {type: sharer_option_ce}]", r"losses\[1\]: sharer_option_ce .* data.choices: true"),
    ("[{type: rows_mse}]", r"losses\[0\] \(rows_mse\): this term serves the per-token map"),
    ("{response_ce: 1.0}", "losses: expected a list of loss components, e.g. `losses: \\[{type: response_ce"),
])
def test_validation_refuses_wrong_terms(terms, message):
    with pytest.raises(RecipeError, match=message):
        check("recipes/quickstart.yaml", f"losses={terms}")


def test_terms_a_recipe_cannot_serve_are_refused_with_the_reason():
    with pytest.raises(RecipeError, match=r"sharer_option_ce \(the sharer as teacher\) needs exactly one token-aligned "
                                          r"sharer, but this recipe has a `sharers:` list"):
        check("recipes/two_sharers.yaml", "losses=[{type: response_ce}, {type: sharer_option_ce}]", "data.choices=true")
    options = check("recipes/science_mc_options.yaml")
    assert [(t.name, t.weight) for t in build_losses(options)] == [("response_loss", 1.0), ("option_loss", 1.0)]


@pytest.mark.parametrize("key, value, new", [
    ("option_loss_weight", "1.0", "add `losses: [{type: response_ce}, {type: option_ce, weight: 1.0}]`"),
    ("option_score", "sum", "it is the `score:` of option_ce"),
    ("sharer_option_weight", "0.5", "{type: sharer_option_ce, weight: 0.5}"),
    ("sharer_option_temperature", "0.1", "it is the `temperature:` of sharer_option_ce"),
    ("contrast_weight", "1.0", "{type: contrast, weight: 1.0}"),
    ("contrast_margin", "0.2", "it is the `margin:` of contrast"),
    ("gate_sparsity", "2.0", "{type: gate_sparsity, weight: 2.0}"),
    ("gate_target_open", "0.3", "it is the `target_open:` of gate_sparsity"),
])
def test_moved_trainer_keys_say_the_new_form(key, value, new):
    with pytest.raises(RecipeError) as info:
        check("recipes/science_mc_options.yaml", f"trainer.{key}={value}")
    message = str(info.value)
    assert message.startswith(f"trainer.{key} moved: ") and new in message and "\n" not in message
    with pytest.raises(TypeError):
        TrainerSettings(**{key: float(value) if value[0].isdigit() else value})


def test_the_lora_control_keeps_the_terms_a_receiver_alone_computes(caplog):
    terms = "losses=[{type: response_ce}, {type: option_ce}, {type: contrast}, {type: gate_sparsity, weight: 0.5}]"
    recipe_ = check("recipes/science_mc_options.yaml", terms)
    with caplog.at_level(logging.WARNING, logger="lcf.training.lora"):
        kept = control_losses(recipe_)
    assert [t.name for t in kept] == ["response_loss", "option_loss"]
    assert "contrast is left out of the LoRA control" in caplog.text and "gate_sparsity is left out" in caplog.text
    with pytest.raises(RecipeError, match="none of this recipe's terms applies to the LoRA control"):
        control_losses(check("recipes/science_mc.yaml", "losses=[{type: gate_sparsity}]"))
