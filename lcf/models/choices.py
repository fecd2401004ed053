"""Every option of a multiple-choice item scored on one prompt cache (lm-evaluation-harness's scoring).

Each option's continuation is scored by its summed log-likelihood after the prompt; the prompt's cache is
computed once per item and repeated for the K options. Batches carry every option
(``data: {type: eval_task, format: cloze, choices: true}``): ``choice_ids`` / ``choice_mask`` (B, K, L)
right-padded continuations, ``choice_valid`` (B, K) (items with fewer options are padded),
``choice_gold`` (B,) and ``choice_chars`` (B, K).

The communicator scores options on the fused cache with :func:`choice_log_likelihoods`; the training
losses built on these scores live in :mod:`lcf.training.options`.
"""
from __future__ import annotations

import torch

from lcf.errors import LCFError
from lcf.models.kv import KVView, cache_kwargs

CHOICE_KEYS = ("choice_ids", "choice_mask", "choice_valid", "choice_gold", "choice_chars")


def require_choices(batch: dict) -> None:
    """Refuse a batch that does not carry every option of each item."""
    missing = [k for k in CHOICE_KEYS if k not in batch]
    if missing:
        raise LCFError(
            f"an option loss (option_ce, sharer_option_ce, contrast) needs every option of each item in the batch, "
            f"but the batch lacks {', '.join(missing)}; set `data.choices: true` with `data: {{type: eval_task, "
            f"format: cloze}}`, or remove the option terms from the recipe's `losses:`")


def repeat_view(view: KVView, k: int) -> KVView:
    """``view`` with each batch row repeated ``k`` times in place (row b -> rows b*k .. b*k+k-1)."""
    return KVView([t.repeat_interleave(k, 0) for t in view.keys], [t.repeat_interleave(k, 0) for t in view.values],
                  view.seq_len, view.specs)


def choice_log_likelihoods(model: torch.nn.Module, view: KVView, batch: dict, side: str = "receiver") -> torch.Tensor:
    """(B, K) summed log-likelihood of each option's tokens after the prompt.

    ``view`` holds the cache of every prompt token but the last (as
    :meth:`~lcf.communicator.Communicator.fused_prompt_cache` returns it); the last prompt token is
    run again with each option, as in :meth:`~lcf.communicator.Communicator.continue_logits`.
    ``side="sharer"``: the sharer's prompt and option tokens (``model`` is then the sharer)."""
    require_choices(batch)
    prefix = "" if side == "receiver" else f"{side}_"
    p_ids, p_mask = batch[f"{side}_prompt_ids"], batch[f"{side}_prompt_mask"]
    c_ids, c_mask = batch[f"{prefix}choice_ids"], batch[f"{prefix}choice_mask"]
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
