"""A training loss on the option distribution of multiple-choice items (lm-eval's scoring, made a loss).

The usual loss teaches the receiver to write the gold option's text. Multiple choice is scored
differently: every option's continuation is scored by its log-likelihood and the best one is picked
(lm-evaluation-harness ``acc``; ``acc_norm`` divides by the option's length in characters; the scores
come from :func:`lcf.models.choices.choice_log_likelihoods`). The option loss trains exactly that decision::

    score_k = sum_t log p(option_k token t | prompt, option_k tokens < t)     (score: sum)
    score_k = that sum / len(option_k text in characters)                      (score: norm)
    option_loss = cross_entropy(softmax_k(score_k), gold)

Batches carry every option (``data: {type: eval_task, format: cloze, choices: true}``):
``choice_ids`` / ``choice_mask`` (B, K, L) right-padded continuations, ``choice_valid`` (B, K)
(items with fewer options are padded), ``choice_gold`` (B,) and ``choice_chars`` (B, K).
The prompt is computed once per item; its cache is repeated for the K continuations.

Loss components (:mod:`lcf.training.loss_terms`): ``option_ce`` is ``option_loss``; ``sharer_option_ce``
is ``sharer_option_loss``. The sharer as teacher (``{type: sharer_option_ce}``): the sharer answers the same item on its own,
scoring every option the same way, and the fused receiver's option distribution is pulled towards the
sharer's (cross-entropy against the sharer's softmax over option scores, i.e. KL up to a constant)::

    sharer_option_loss = - sum_k softmax_k(sharer score_k / T) * log softmax_k(fused score_k / T)

Per-character scores differ little between options (a few tenths of a nat), so at ``T = 1`` both
distributions are nearly flat and the term carries almost no signal (measured: the validation value
stayed within 0.005 of its start over 400 steps); a ``temperature`` below 1
sharpens both sides (knowledge distillation with a temperature, here used to sharpen).

Only the sharer's *cache* reaches the receiver, so matching the sharer on an item means reading that
item's cache; another item's cache (the mismatched control) carries the wrong preference. The batch then
also carries the options in the sharer's tokens (``sharer_choice_ids`` / ``sharer_choice_mask``).
"""
from __future__ import annotations

from typing import Literal

import torch

from lcf.errors import LCFError
from lcf.models.choices import choice_log_likelihoods
from lcf.models.kv import positions_from_mask, prefill

SHARER_CHOICE_KEYS = ("sharer_prompt_ids", "sharer_prompt_mask", "sharer_choice_ids", "sharer_choice_mask")
OptionScore = Literal["norm", "sum"]


def option_scores(ll: torch.Tensor, batch: dict, score: OptionScore = "norm") -> torch.Tensor:
    """Per-option scores as lm-eval ranks them (``acc_norm``: per character), ``-inf`` on padded options."""
    if score not in ("norm", "sum"):
        raise LCFError(f"the option score must be 'norm' (log-likelihood per character, acc_norm) or 'sum' (acc), "
                       f"got {score!r}")
    out = ll / batch["choice_chars"].clamp(min=1).to(ll.dtype) if score == "norm" else ll
    return out.masked_fill(~batch["choice_valid"].bool(), float("-inf"))


def option_loss(ll: torch.Tensor, batch: dict, score: OptionScore = "norm") -> tuple[torch.Tensor, torch.Tensor]:
    """``(cross-entropy of the gold option under softmax over option scores, accuracy)`` for a batch."""
    scores = option_scores(ll, batch, score)
    gold = batch["choice_gold"].long()
    loss = torch.nn.functional.cross_entropy(scores, gold)
    acc = (scores.argmax(-1) == gold).float().mean()
    return loss, acc.detach()


@torch.no_grad()
def sharer_choice_log_likelihoods(sharer: torch.nn.Module, batch: dict) -> torch.Tensor:
    """(B, K) the sharer's own log-likelihood of each option after its own prompt (the teacher)."""
    missing = [k for k in SHARER_CHOICE_KEYS if k not in batch]
    if missing:
        raise LCFError(f"sharer_option_ce needs the options in the sharer's tokens, but the batch lacks "
                       f"{', '.join(missing)}; use `data: {{type: eval_task, format: cloze, choices: true}}` with a "
                       f"token-aligned sharer, or remove sharer_option_ce from the recipe's `losses:`")
    ids, mask = batch["sharer_prompt_ids"][:, :-1], batch["sharer_prompt_mask"][:, :-1]
    view = prefill(sharer, ids, attention_mask=mask, position_ids=positions_from_mask(mask))
    return choice_log_likelihoods(sharer, view, batch, side="sharer")


def sharer_option_loss(ll: torch.Tensor, sharer_ll: torch.Tensor, batch: dict, score: OptionScore = "norm",
                       temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-entropy of the fused option distribution against the sharer's (both softmaxes at
    ``temperature``) and the fraction of items whose argmaxes agree; padded options carry no weight."""
    valid = batch["choice_valid"].bool()
    student = option_scores(ll, batch, score)
    teacher = torch.softmax(option_scores(sharer_ll.to(ll.dtype), batch, score) / temperature, dim=-1)
    logq = torch.log_softmax(student / temperature, dim=-1).masked_fill(~valid, 0.0)
    loss = -(teacher * logq).sum(-1).mean()
    agree = (student.argmax(-1) == teacher.argmax(-1)).float().mean()
    return loss, agree.detach()
