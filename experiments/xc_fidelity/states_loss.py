"""A fidelity loss for the per-token map: the receiver should read the message as it reads its own cache.

``own_states`` (loss component of the per-token trainer): for each item, the receiver runs the question tail and the
answer twice, once on its own cache of the context (the training rows ``y``, no gradient: the teacher) and once on
the map's rows; the term is the squared difference of the two runs' hidden states at those positions, every layer's
output (``output_hidden_states``, the embeddings left out), each layer divided by the teacher's mean square there:

    own_states = mean over layers l of  sum_t ||h_l,t(map) - h_l,t(own)||^2 / sum_t ||h_l,t(own)||^2

Where ``rows_mse`` weighs every K/V column the same, this weighs an error by what it changes in the receiver's
reading of the question and the answer (the outputs its attention produces over the context), the issue's "loss
on the receiver's own-cache attention outputs". Import it from a recipe: ``imports:
[experiments.xc_fidelity.states_loss]`` (run with the repository root on PYTHONPATH).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lcf.registry import losses
from lcf.training.loss import TOKEN_MAP, Loss


def reading_states(module: Any, rows: torch.Tensor, f: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
    """The receiver's hidden states (layer outputs, embeddings left out) over the question tail and the answer
    of one item, reading ``rows`` as its cache of the context."""
    from lcf.models.kv import cache_kwargs
    from lcf.models.rows import unflat_kv

    p, ans = f["head"], f["answer"]
    view, start = unflat_kv(rows, p, module.rope)
    ids = torch.cat([p.tail, ans])[None]
    model = module.receiver
    pos = torch.arange(start, start + ids.shape[1], device=ids.device)[None]
    out = model(input_ids=ids, position_ids=pos, use_cache=True, output_hidden_states=True, logits_to_keep=1,
                attention_mask=torch.ones(1, start + ids.shape[1], dtype=torch.long, device=ids.device),
                **cache_kwargs(model, view.to_cache(model)))
    return tuple(h[0].float() for h in out.hidden_states[1:])


def item_own_states(module: Any, rows: torch.Tensor, f: Mapping[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        own = reading_states(module, f["y"].to(rows.dtype), f)
    got = reading_states(module, rows, f)
    return torch.stack([((g - o) ** 2).sum() / (o ** 2).sum().clamp(min=1e-6) for g, o in zip(got, own)]).mean()


@losses.register("own_states")
class OwnStates(Loss):
    """The receiver's hidden states reading the map's rows against reading its own cache (mean over items)."""

    log_name = "own_states"
    trainers = frozenset({TOKEN_MAP})

    def __call__(self, module: Any, out: Mapping[str, Any], batch: Any):
        total = 0.0
        for rows, f in zip(out["rows"], batch):
            total = total + item_own_states(module, rows, f)
        return total / len(batch), {}
