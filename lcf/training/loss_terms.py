"""The built-in loss components of fused translators (and of the LoRA receiver control).

=================  ===========================================================  ===========================
type               term (logged as ``train/<name>``, ``val/<name>``)             arguments
=================  ===========================================================  ===========================
response_ce        cross-entropy of the response tokens (``response_loss``);     weight
                   the default when a recipe has no ``losses:``
option_ce          cross-entropy over every option's score, lm-eval's decision   weight, score: norm | sum
                   (``option_loss``, ``option_acc``; :mod:`lcf.training.options`)
sharer_option_ce   cross-entropy of the fused option distribution against the    weight, temperature, score
                   sharer's own on the same item, the sharer as teacher
                   (``sharer_option_loss``, ``sharer_agree``)
contrast           hinge: the gold option must be likelier with the item's own   weight, margin, score
                   sharer cache than with another item's, by ``margin`` nats
                   (``contrast``, ``contrast_gap``, ``contrast_own_better``;
                   :mod:`lcf.training.contrast`; training steps only)
gate_sparsity      ``(mean sigmoid(gate logit) - target_open)^2``: pushes the     weight, target_open
                   fraction of open gates towards the target (``gate_penalty``,
                   unweighted; training steps only; 0 without learnable gates)
=================  ===========================================================  ===========================

The option terms need every option in the batch (``data: {type: eval_task, format: cloze, choices: true}``);
``sharer_option_ce`` and ``contrast`` need one token-aligned sharer. ``lcf validate`` refuses a recipe that
cannot serve a term it lists. The LoRA control (``lcf train-lora``) computes ``response_ce``, ``option_ce`` and
``sharer_option_ce``; it reads no sharer cache and has no gates, so it leaves ``contrast`` and ``gate_sparsity`` out.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from lcf.errors import LCFError, RecipeError
from lcf.registry import losses
from lcf.training.loss import FUSED, LORA, Loss, choices_in_data, single_token_aligned_sharer
from lcf.training.settings import TrainerSettings

Score = Literal["norm", "sum"]


def _check_score(score: str) -> str:
    if score not in ("norm", "sum"):
        raise ValueError(f"score must be 'norm' (log-likelihood per character, acc_norm) or 'sum' (acc), got {score!r}")
    return score


@losses.register("response_ce")
class ResponseCE(Loss):
    """Cross-entropy of the response tokens given the (fused) prompt: the communicator's ``out["loss"]``."""

    log_name = "response_loss"
    trainers = frozenset({FUSED, LORA})

    def __call__(self, module: Any, out: Mapping[str, Any], batch: Mapping[str, Any]):
        return out["loss"], {}


@losses.register("option_ce")
class OptionCE(Loss):
    """Cross-entropy of the gold option under the softmax over option scores (``score``: norm = per character,
    lm-eval's ``acc_norm``; sum = ``acc``); logs the accuracy of that decision."""

    log_name = "option_loss"
    trainers = frozenset({FUSED, LORA})
    needs_choices = True

    def __init__(self, weight: float = 1.0, score: Score = "norm"):
        super().__init__(weight)
        self.score = _check_score(score)

    def __call__(self, module: Any, out: Mapping[str, Any], batch: Mapping[str, Any]):
        from lcf.training.options import option_loss

        loss, acc = option_loss(out["choice_ll"], dict(batch), self.score)
        return loss, {"option_acc": acc}

    @classmethod
    def check_recipe(cls, recipe: Mapping[str, Any], path: str) -> None:
        choices_in_data(recipe, path, "option_ce")


@losses.register("sharer_option_ce")
class SharerOptionCE(Loss):
    """The sharer as teacher: cross-entropy of the fused option distribution against the sharer's own on the same
    item (both softmaxes at ``temperature``; < 1 sharpens them), i.e. KL up to the sharer's entropy."""

    log_name = "sharer_option_loss"
    trainers = frozenset({FUSED, LORA})
    needs_choices = True
    needs_teacher = True

    def __init__(self, weight: float = 1.0, temperature: float = 1.0, score: Score = "norm"):
        super().__init__(weight)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (1: plain softmax), got {temperature}")
        self.temperature, self.score = float(temperature), _check_score(score)

    def __call__(self, module: Any, out: Mapping[str, Any], batch: Mapping[str, Any]):
        from lcf.training.options import sharer_choice_log_likelihoods, sharer_option_loss

        teacher = module.teacher()
        if teacher is None:
            raise LCFError("sharer_option_ce needs exactly one token-aligned sharer model; this run has none (or "
                           "several, or a cross-context compressor); remove it from the recipe's `losses:`")
        sharer_ll = sharer_choice_log_likelihoods(teacher, dict(batch))
        loss, agree = sharer_option_loss(out["choice_ll"], sharer_ll, dict(batch), self.score, self.temperature)
        return loss, {"sharer_agree": agree}

    @classmethod
    def check_recipe(cls, recipe: Mapping[str, Any], path: str) -> None:
        choices_in_data(recipe, path, "sharer_option_ce")
        single_token_aligned_sharer(recipe, path, "sharer_option_ce (the sharer as teacher)")


@losses.register("contrast")
class Contrast(Loss):
    """mean relu(margin - (option CE with another item's sharer cache - option CE with the item's own)): a second
    fused pass per step with each item reading the next item's cache (:mod:`lcf.training.contrast`)."""

    log_name = "contrast"
    needs_choices = True
    in_validation = False

    def __init__(self, weight: float = 1.0, margin: float = 0.2, score: Score = "norm"):
        super().__init__(weight)
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0 (nats of option cross-entropy), got {margin}")
        self.margin, self.score = float(margin), _check_score(score)

    def __call__(self, module: Any, out: Mapping[str, Any], batch: Mapping[str, Any]):
        from lcf.training.contrast import contrast_loss, mismatched_batch

        comm = module.communicator
        if len(comm.sharers) != 1 or comm.compressor(0) is not None:
            raise LCFError("contrast needs exactly one token-aligned sharer (no compressor, not several sharers); "
                           "remove it from the recipe's `losses:`")
        other = comm(mismatched_batch(dict(batch)), choices=True)["choice_ll"]
        return contrast_loss(out["choice_ll"], other, dict(batch), self.margin, self.score)

    @classmethod
    def check_recipe(cls, recipe: Mapping[str, Any], path: str) -> None:
        single_token_aligned_sharer(recipe, path, "contrast (it swaps in another item's sharer cache)")
        choices_in_data(recipe, path, "contrast")
        trainer = recipe.get("trainer") if isinstance(recipe.get("trainer"), Mapping) else {}
        batch_size = trainer.get("batch_size", TrainerSettings.batch_size)
        if isinstance(batch_size, int) and batch_size < 2:
            raise RecipeError(f"{path}: contrast pairs each item with another item of its batch: trainer.batch_size "
                              f"must be >= 2 (got {batch_size})")


@losses.register("gate_sparsity")
class GateSparsity(Loss):
    """(mean sigmoid(gate logit) - target_open)^2 over every translator's gates: the fraction of open gates moves
    towards ``target_open`` while the other terms pick the layers. 0 for translators without learnable gates."""

    log_name = "gate_penalty"
    in_validation = False

    def __init__(self, weight: float = 1.0, target_open: float = 0.33):
        super().__init__(weight)
        if not 0 <= target_open <= 1:
            raise ValueError(f"target_open must be a fraction in [0, 1], got {target_open}")
        self.target_open = float(target_open)

    def __call__(self, module: Any, out: Mapping[str, Any], batch: Mapping[str, Any]):
        open_frac = module.open_fraction()
        if open_frac is None:
            return out["loss"].new_zeros(()), {}
        return ((open_frac - self.target_open) ** 2).to(out["loss"].dtype), {}


__all__ = ["Contrast", "GateSparsity", "OptionCE", "ResponseCE", "SharerOptionCE"]
