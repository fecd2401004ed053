"""The per-token map's loss components (the recipe's ``losses:`` list; :mod:`lcf.training.loss`).

    losses: [{type: answer_ce, weight: 1.0}, {type: rows_mse, weight: 1.0}]     # the default

``answer_ce``: cross-entropy of the receiver's answer tokens (and end of turn) read on the translated context;
``rows_mse``: mean squared error of the translated rows to the receiver's own rows, each column divided by its
variance over the training rows. Both are means over the batch's items, logged as ``train/answer_ce`` and
``train/rows_mse`` (``val/...``). :class:`lcf.token_map.module.TokenMapModule` translates each item's rows once
(``out["rows"]``) and sums the weighted terms.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lcf.registry import losses
from lcf.training.loss import TOKEN_MAP, Loss


def item_answer_ce(module: Any, rows: torch.Tensor, f: Mapping[str, Any]) -> torch.Tensor:
    """The receiver's cross-entropy of one item's answer (and end of turn), reading ``rows`` as its context."""
    from lcf.models.kv import cache_kwargs
    from lcf.models.rows import unflat_kv

    p, ans = f["head"], f["answer"]
    view, start = unflat_kv(rows, p, module.rope)
    ids = torch.cat([p.tail, ans])[None]
    model = module.receiver
    pos = torch.arange(start, start + ids.shape[1], device=ids.device)[None]
    out = model(input_ids=ids, position_ids=pos, use_cache=True,
                attention_mask=torch.ones(1, start + ids.shape[1], dtype=torch.long, device=ids.device),
                **cache_kwargs(model, view.to_cache(model)))
    return torch.nn.functional.cross_entropy(out.logits[0, len(p.tail) - 1:-1].float(), ans)


def item_rows_mse(module: Any, rows: torch.Tensor, f: Mapping[str, Any]) -> torch.Tensor:
    """Mean squared error of one item's translated rows to the receiver's own, per column over its variance."""
    y = f["y"].to(module.translator.y_mean.dtype)
    return (((rows - y) ** 2) / module.variance).mean()


def _batch_mean(per_item, module: Any, out: Mapping[str, Any], batch: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    total = 0.0
    for rows, f in zip(out["rows"], batch):
        total = total + per_item(module, rows, f)
    return total / len(batch)


@losses.register("answer_ce")
class AnswerCE(Loss):
    """The receiver's answer cross-entropy on the translated context (mean over the batch's items)."""

    log_name = "answer_ce"
    trainers = frozenset({TOKEN_MAP})

    def __call__(self, module: Any, out: Mapping[str, Any], batch: Any):
        return _batch_mean(item_answer_ce, module, out, batch), {}


@losses.register("rows_mse")
class RowsMSE(Loss):
    """The variance-normalised squared error of the translated rows to the receiver's own (mean over items)."""

    log_name = "rows_mse"
    trainers = frozenset({TOKEN_MAP})

    def __call__(self, module: Any, out: Mapping[str, Any], batch: Any):
        return _batch_mean(item_rows_mse, module, out, batch), {}
