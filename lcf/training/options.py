"""A training loss on the option distribution of multiple-choice items (lm-eval's scoring, made a loss).

The usual loss teaches the receiver to write the gold option's text. Multiple choice is scored
differently: every option's continuation is scored by its log-likelihood and the best one is picked
(lm-evaluation-harness ``acc``; ``acc_norm`` divides by the option's length in characters). The
option loss trains exactly that decision::

    score_k = sum_t log p(option_k token t | prompt, option_k tokens < t)     (option_score: sum)
    score_k = that sum / len(option_k text in characters)                      (option_score: norm)
    option_loss = cross_entropy(softmax_k(score_k), gold)

Batches carry every option (``data: {type: eval_task, format: cloze, choices: true}``):
``choice_ids`` / ``choice_mask`` (B, K, L) right-padded continuations, ``choice_valid`` (B, K)
(items with fewer options are padded), ``choice_gold`` (B,) and ``choice_chars`` (B, K).
The prompt is computed once per item; its cache is repeated for the K continuations.
"""
from __future__ import annotations

from typing import Literal

import torch

from lcf.errors import LCFError
from lcf.models.kv import KVView, cache_kwargs

CHOICE_KEYS = ("choice_ids", "choice_mask", "choice_valid", "choice_gold", "choice_chars")
OptionScore = Literal["norm", "sum"]


def require_choices(batch: dict) -> None:
    missing = [k for k in CHOICE_KEYS if k not in batch]
    if missing:
        raise LCFError(
            f"trainer.option_loss_weight > 0 needs every option of each item in the batch, but the batch lacks "
            f"{', '.join(missing)}; set `data.choices: true` with `data: {{type: eval_task, format: cloze}}`, or set "
            f"trainer.option_loss_weight: 0")


def repeat_view(view: KVView, k: int) -> KVView:
    """``view`` with each batch row repeated ``k`` times in place (row b -> rows b*k .. b*k+k-1)."""
    return KVView([t.repeat_interleave(k, 0) for t in view.keys], [t.repeat_interleave(k, 0) for t in view.values],
                  view.seq_len, view.specs)


def choice_log_likelihoods(model: torch.nn.Module, view: KVView, batch: dict) -> torch.Tensor:
    """(B, K) summed log-likelihood of each option's tokens after the prompt.

    ``view`` holds the receiver cache of every prompt token but the last (as
    :meth:`~lcf.communicator.Communicator.fused_prompt_cache` returns it); the last prompt token is
    run again with each option, as in :meth:`~lcf.communicator.Communicator.continue_logits`."""
    require_choices(batch)
    p_ids, p_mask = batch["receiver_prompt_ids"], batch["receiver_prompt_mask"]
    c_ids, c_mask = batch["choice_ids"], batch["choice_mask"]
    b, k, length = c_ids.shape
    inp = torch.cat([p_ids[:, -1:].repeat_interleave(k, 0), c_ids.reshape(b * k, length)], dim=1)
    attn = torch.cat([p_mask.repeat_interleave(k, 0), c_mask.reshape(b * k, length)], dim=1)
    start = p_mask.long().sum(-1, keepdim=True).repeat_interleave(k, 0) - 1
    pos = start + torch.arange(length + 1, device=inp.device)
    owner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT-wrapped receiver
    cache = cache_kwargs(owner, repeat_view(view, k).to_cache(owner))
    logits = model(input_ids=inp, attention_mask=attn, position_ids=pos, use_cache=True, **cache).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_ll = logp.gather(-1, c_ids.reshape(b * k, length, 1)).squeeze(-1)
    return (token_ll * c_mask.reshape(b * k, length)).sum(-1).view(b, k)


def option_scores(ll: torch.Tensor, batch: dict, score: OptionScore = "norm") -> torch.Tensor:
    """Per-option scores as lm-eval ranks them (``acc_norm``: per character), ``-inf`` on padded options."""
    if score not in ("norm", "sum"):
        raise LCFError(f"option_score must be 'norm' (log-likelihood per character, acc_norm) or 'sum' (acc), "
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
