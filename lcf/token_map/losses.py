"""The per-token map's loss terms and their weights (the recipe's ``losses:`` section), validated without torch.

    losses: {answer_ce: 1.0, rows_mse: 1.0}

``answer_ce``: cross-entropy of the receiver's answer tokens (and end of turn) read on the translated context;
``rows_mse``: mean squared error of the translated rows to the receiver's own rows, each column divided by its
variance over the training rows. Computed in :class:`lcf.token_map.module.TokenMapModule`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lcf.errors import RecipeError, suggest

LOSS_TERMS = {"answer_ce": 1.0, "rows_mse": 1.0}  # the per-token map's loss terms and their default weights


def loss_weights(spec: Any, path: str = "losses") -> dict[str, float]:
    """``losses: {answer_ce: 1.0, rows_mse: 1.0}`` -> the weights (every term named, unknown ones refused)."""
    if spec is None:
        return dict(LOSS_TERMS)
    if not isinstance(spec, Mapping):
        raise RecipeError(f"{path}: expected a mapping of loss term -> weight, e.g. {LOSS_TERMS}, got {spec!r}")
    out = dict(LOSS_TERMS)
    for name, weight in spec.items():
        if name not in LOSS_TERMS:
            raise RecipeError(f"{path}.{name}: unknown loss term.{suggest(str(name), LOSS_TERMS)} Terms of the "
                              f"per-token map: {', '.join(LOSS_TERMS)}.")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise RecipeError(f"{path}.{name}: a finite weight >= 0 (0 turns the term off), got {weight!r}")
        out[name] = float(weight)
    if not any(out.values()):
        raise RecipeError(f"{path}: every weight is 0, so nothing would be trained")
    return out


