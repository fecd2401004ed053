"""A contrastive term: the item's own sharer cache must beat another item's on the option decision.

The loss component ``{type: contrast, weight: 1.0, margin: 0.2}`` (:mod:`lcf.training.loss_terms`).

The evaluation's mismatched control (:mod:`lcf.eval.controls`) shows that most of what a fused receiver
gains is adaptation: with another item's sharer cache it scores about as well. The plain losses never
ask for more, since a translator that ignores the sharer's content already lowers them. This term does
ask: per item ``b`` of a batch, with the option cross-entropy of :mod:`lcf.training.options`::

    ce_own[b]   = option cross-entropy with item b's own sharer cache
    ce_other[b] = the same with the sharer cache of item b+1 (mod B), as the mismatched control reads it
    contrast    = mean_b relu(margin - (ce_other[b] - ce_own[b]))

Gradients flow through both paths: lowering the term means the gold option must be more likely with the
right cache than with a wrong one, which only a translator that reads the sharer's content can do. It
can also be lowered by *hurting* the receiver when the cache does not fit the question; the margin
(in nats) bounds that, and the evaluation's zero / mismatched controls and the receiver alone show it.
The other item's prompt is re-run through the sharer (no gradients reach the frozen sharer), with the
item's own alignment clipped to that prompt's length, exactly as the evaluation's control does.
"""
from __future__ import annotations

import torch

from lcf.errors import LCFError
from lcf.training.options import option_scores


def mismatched_batch(batch: dict) -> dict:
    """``batch`` with each item reading the sharer prompt of the next item (mod B), its alignment
    clipped to that prompt's length; every other key (receiver prompt, options, response) is kept.

    Prompts are LEFT-padded (:func:`lcf.data.features.collate_prompts`): ``align_index`` counts from the
    start of the padded sharer row, so it is taken back to the prompt, clipped, and shifted again."""
    ids, mask = batch["sharer_prompt_ids"], batch["sharer_prompt_mask"]
    b, width = ids.shape
    if b < 2:
        raise LCFError("the contrast loss pairs each item with another item of its batch, but this batch has 1 item; "
                       "set trainer.batch_size >= 2 (and keep the last batch full) or remove contrast from `losses:`")
    partner = torch.roll(torch.arange(b, device=ids.device), -1)  # item i reads item i+1's cache
    lengths = mask.long().sum(-1)
    own_pad, other_pad = width - lengths, (width - lengths)[partner]
    raw = (batch["align_index"] - own_pad[:, None]).clamp(min=0)
    clipped = torch.minimum(raw, (lengths[partner] - 1).clamp(min=0)[:, None]) + other_pad[:, None]
    align = batch["align_mask"].bool()
    return batch | {"sharer_prompt_ids": ids[partner], "sharer_prompt_mask": mask[partner],
                    "align_index": torch.where(align, clipped, torch.zeros_like(clipped))}


def option_ce_per_item(ll: torch.Tensor, batch: dict, score: str = "norm") -> torch.Tensor:
    """(B,) cross-entropy of the gold option under the softmax over option scores, per item."""
    return torch.nn.functional.cross_entropy(option_scores(ll, batch, score), batch["choice_gold"].long(),
                                             reduction="none")


def contrast_loss(own_ll: torch.Tensor, other_ll: torch.Tensor, batch: dict, margin: float,
                  score: str = "norm") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(mean relu(margin - (ce_other - ce_own)), logs)``; logs: the mean gap ``ce_other - ce_own`` and
    the fraction of items whose gold option ranks higher with their own cache than with the other's."""
    own, other = option_ce_per_item(own_ll, batch, score), option_ce_per_item(other_ll, batch, score)
    gap = other - own
    return torch.relu(margin - gap).mean(), {"contrast_gap": gap.mean().detach(),
                                             "contrast_own_better": (gap > 0).float().mean().detach()}
