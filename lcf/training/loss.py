"""Loss components: the terms a recipe's ``losses:`` section lists, summed by the trainer.

    losses:
      - {type: response_ce}                        # the default when the section is absent
      - {type: option_ce, weight: 1.0, score: norm}

Each entry names a component of the ``losses`` registry (built-in ones: :mod:`lcf.training.loss_terms` for the
fused translators, :mod:`lcf.token_map.losses` for the per-token map; a dotted path or ``@losses.register`` for
your own). A component is a :class:`Loss`: called with the training module, the forward pass's outputs and the
batch, it returns its unweighted term and what to log; the trainer multiplies by ``weight``, sums the terms,
and logs each one under ``<stage>/<log_name>``. What a component needs is declared on its class
(``needs_choices``, ``needs_teacher``, ``trainers``, ``in_validation``) and what the recipe must offer is
checked by :meth:`Loss.check_recipe` when ``lcf validate`` runs, without loading a model.

This module imports neither torch nor Lightning: recipes are validated with it.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from lcf.errors import RecipeError, RegistryError

if TYPE_CHECKING:
    import torch

#: what trains a recipe: a fused translator (``LCFModule``), the per-token map, or the LoRA receiver control
FUSED, TOKEN_MAP, LORA = "fused", "token_map", "lora"
TRAINER_NAMES = {FUSED: "a fused translator (lcf train)", TOKEN_MAP: "the per-token map (translator type token_map)",
                 LORA: "the LoRA receiver control (lcf train-lora)"}
#: the terms used when a recipe has no ``losses:`` section
DEFAULT_LOSSES: dict[str, list[dict[str, Any]]] = {
    FUSED: [{"type": "response_ce"}],
    TOKEN_MAP: [{"type": "answer_ce", "weight": 1.0}, {"type": "rows_mse", "weight": 1.0}],
}


class Loss:
    """One weighted loss term. Subclasses set ``log_name`` and implement :meth:`__call__`; they take their
    settings as keyword arguments (checked against the signature by ``lcf validate``) and pass ``weight`` on."""

    #: the metric name of the term (``train/<log_name>``, ``val/<log_name>``); default: the class name
    log_name: ClassVar[str] = ""
    #: which trainers can compute it (:data:`FUSED`, :data:`TOKEN_MAP`, :data:`LORA`)
    trainers: ClassVar[frozenset[str]] = frozenset({FUSED})
    #: the forward pass must score every option of each item (``out["choice_ll"]``; ``data.choices: true``)
    needs_choices: ClassVar[bool] = False
    #: the sharer model answering alone is needed (``module.teacher()``)
    needs_teacher: ClassVar[bool] = False
    #: also computed (and logged) on validation batches; ``val/loss`` itself stays the response loss
    in_validation: ClassVar[bool] = True

    def __init__(self, weight: float = 1.0):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0 (0 turns the term off), got {weight!r}")
        self.weight = float(weight)
        self.type_name = type(self).__name__  # the recipe's `type:` once built from a recipe (build_losses)

    @property
    def name(self) -> str:
        return self.log_name or type(self).__name__

    def __call__(self, module: Any, out: Mapping[str, Any], batch: Mapping[str, Any]) \
            -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(unweighted term, {metric name: value to log})`` for one batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(module, out, batch)")

    @classmethod
    def check_recipe(cls, recipe: Mapping[str, Any], path: str) -> None:
        """Raise :class:`RecipeError` (naming ``path``) when the recipe's data or models cannot serve this term."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight})"


def trainer_of(recipe: Mapping[str, Any]) -> str:
    """:data:`TOKEN_MAP` when the recipe's translator is per-token, else :data:`FUSED`."""
    from lcf.runtime.kinds import PER_TOKEN, adapter_kind

    spec = recipe.get("translator")
    if isinstance(spec, Mapping) and isinstance(spec.get("type"), str):
        try:
            if adapter_kind(spec["type"]) == PER_TOKEN:
                return TOKEN_MAP
        except Exception:  # an unknown translator reports its own problem
            pass
    return FUSED


def loss_specs(recipe: Mapping[str, Any], trainer: str | None = None) -> list[dict[str, Any]]:
    """The recipe's ``losses:`` entries, or the default terms of its trainer."""
    spec = recipe.get("losses")
    if spec is None:
        return [dict(s) for s in DEFAULT_LOSSES[trainer or trainer_of(recipe)]]
    if isinstance(spec, Mapping) or not isinstance(spec, Sequence) or isinstance(spec, str):
        example = "[{type: response_ce}, {type: option_ce, weight: 1.0}]"
        if isinstance(spec, Mapping) and spec and all(isinstance(v, (int, float)) for v in spec.values()):
            example = "[" + ", ".join(f"{{type: {k}, weight: {v}}}" for k, v in spec.items()) + "]"
        raise RecipeError(f"losses: expected a list of loss components, e.g. `losses: {example}`, got {spec!r}")
    return list(spec)


def build_losses(recipe: Mapping[str, Any], trainer: str | None = None, *, check: bool = True) -> list[Loss]:
    """Build the recipe's loss components (validated; see :func:`check_losses`) for ``trainer``."""
    from lcf.registry import losses as registry

    trainer = trainer or trainer_of(recipe)
    built, seen = [], {}
    for i, spec in enumerate(loss_specs(recipe, trainer)):
        path = f"losses[{i}]"
        cls, kwargs = registry.check(spec, path)
        if not (inspect.isclass(cls) and issubclass(cls, Loss)):
            raise RecipeError(f"{path}.type: {spec['type']!r} is {cls!r}, not a loss component; derive a class from "
                              f"lcf.training.loss.Loss and register it with @lcf.registry.losses.register(...)")
        try:
            term = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"{path} ({spec['type']}): {exc}") from exc
        if term.name in seen:
            raise RecipeError(f"{path}: a second {spec['type']!r} term (the first is losses[{seen[term.name]}]); list "
                              f"each term once and set its weight")
        seen[term.name] = i
        term.type_name = str(spec["type"])
        if trainer not in cls.trainers:
            raise RecipeError(f"{path} ({spec['type']}): this term serves "
                              f"{' or '.join(TRAINER_NAMES[t] for t in sorted(cls.trainers))}, but this recipe trains "
                              f"{TRAINER_NAMES[trainer]}; remove it or change the translator. "
                              f"Terms here: {', '.join(serving(trainer))}")
        if check:
            cls.check_recipe(recipe, path)
        built.append(term)
    if not any(t.weight > 0 for t in built):
        raise RecipeError("losses: every weight is 0 (or the list is empty), so nothing would be trained; give one "
                          "term a weight > 0, e.g. `losses: [{type: response_ce}]`")
    return built


def check_losses(recipe: Mapping[str, Any]) -> None:
    """``lcf validate``: the ``losses:`` section (or its default) builds for the recipe's trainer and data."""
    try:
        build_losses(recipe)
    except RegistryError as exc:
        raise RecipeError(f"losses: {exc}") from exc


def serving(trainer: str) -> list[str]:
    """The registered loss names that ``trainer`` can compute."""
    from lcf.registry import losses as registry

    return [name for name, cls in registry.items()
            if inspect.isclass(cls) and issubclass(cls, Loss) and trainer in cls.trainers]


def single_token_aligned_sharer(recipe: Mapping[str, Any], path: str, what: str) -> None:
    """Refuse a recipe whose sharer cache is not one token-aligned sharer (a compressor or a ``sharers:`` list)."""
    if recipe.get("compressor") is not None or recipe.get("sharers"):
        has = "a compressor (cross-context)" if recipe.get("compressor") is not None else "a `sharers:` list"
        raise RecipeError(f"{path}: {what} needs exactly one token-aligned sharer, but this recipe has {has}; "
                          f"remove this term from `losses:`")


def choices_in_data(recipe: Mapping[str, Any], path: str, what: str) -> None:
    """Refuse a recipe whose data does not put every option of each item in the batch."""
    data = recipe.get("data")
    if not (isinstance(data, Mapping) and data.get("choices") is True):
        raise RecipeError(f"{path}: {what} scores every option of each item, so it needs `data: {{type: eval_task, "
                          f"format: cloze, choices: true}}` (this recipe's data.choices is "
                          f"{data.get('choices') if isinstance(data, Mapping) else None!r}); set data.choices: true "
                          f"or remove this term")


def apply_losses(module: Any, terms: Sequence[Loss], out: Mapping[str, Any], batch: Mapping[str, Any], stage: str,
                 batch_size: int) -> torch.Tensor | None:
    """Sum ``weight * term`` over ``terms`` (weight 0: off; at validation only those ``in_validation``) and log
    each term under ``<stage>/<name>`` with its extra metrics; None when no term ran."""
    total = None
    sync = stage == "val"
    for term in terms:
        if term.weight == 0 or (stage != "train" and not term.in_validation):
            continue
        value, logs = term(module, out, batch)
        weighted = term.weight * value
        total = weighted if total is None else total + weighted.to(total.dtype)
        module.log(f"{stage}/{term.name}", value.detach(), batch_size=batch_size, sync_dist=sync)
        for name, metric in logs.items():
            module.log(f"{stage}/{name}", metric, prog_bar=stage == "val" and name.endswith(("acc", "agree")),
                       batch_size=batch_size, sync_dist=sync)
    return total


def needs_choices(terms: Sequence[Loss]) -> bool:
    """Whether the forward pass must score every option (a term that is on needs ``out["choice_ll"]``)."""
    return any(t.needs_choices and t.weight > 0 for t in terms)
