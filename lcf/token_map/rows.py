"""The rows the per-token map reads and writes, for one cross-context item (``lcf.data.xc.features.XCExample``).

    x: (T, Ds)  the sharer's rows for the T receiver tokens of the item's context (the sharer reads it alone)
    y: (T, Dr)  the receiver's own rows for those tokens (its prompt: own text, context, question)

Both with the rotary phase undone (:mod:`lcf.models.rows`). Torch and transformers only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lcf.models.kv import KVView
from lcf.models.rows import Prepared, context_span, flat_kv, layer_rope, prepare_item, question_only, sharer_rows


@dataclass
class TokenRows:
    """Both frozen models with their tokenizers, templates and rotary functions."""

    receiver: Any
    receiver_tokenizer: Any
    sharer: Any
    sharer_tokenizer: Any
    template: str = "auto"
    sharer_template: str = "auto"

    def __post_init__(self) -> None:
        self.receiver_rope, self.sharer_rope = layer_rope(self.receiver), layer_rope(self.sharer)

    @torch.no_grad()
    def sharer_side(self, item: Any) -> torch.Tensor:
        """x (T, Ds) alone (what a sender computes)."""
        own = getattr(item, "receiver_context", "")
        span = context_span(self.receiver_tokenizer, item.question, item.sharer_context, self.template, own)
        return sharer_rows(self.sharer, self.sharer_tokenizer, self.sharer_rope, self.receiver_tokenizer, span,
                           item.sharer_context, self.sharer_template)

    @torch.no_grad()
    def features(self, item: Any) -> tuple[torch.Tensor, torch.Tensor, Prepared]:
        """x (T, Ds), y (T, Dr) and the receiver's prepared prompt. Text the receiver holds itself
        (``item.receiver_context``) precedes the context in its prompt, read by itself. Raises
        :class:`lcf.models.rows.WindowError` for a receiver prompt longer than a sliding window."""
        own = getattr(item, "receiver_context", "")
        span = context_span(self.receiver_tokenizer, item.question, item.sharer_context, self.template, own)
        p = prepare_item(self.receiver, self.receiver_tokenizer, item.question, item.sharer_context, self.template,
                         span)
        x = sharer_rows(self.sharer, self.sharer_tokenizer, self.sharer_rope, self.receiver_tokenizer, span,
                        item.sharer_context, self.sharer_template)
        dev = self.receiver.device
        y = flat_kv(p.view, self.receiver_rope, torch.arange(p.b, device=dev), torch.arange(p.a, p.b, device=dev))
        return x, y, p

    def without_context(self, item: Any) -> tuple[KVView, int, torch.Tensor]:
        """The receiver's prompt with no sharer context (its own text stays), prefilled but for its last token."""
        return question_only(self.receiver, self.receiver_tokenizer, item.question,
                             getattr(item, "receiver_context", ""), self.template)


def head_only(p: Prepared) -> Prepared:
    """``p`` keeping only the receiver's cache before the context (all that training reads): a copy, so the
    context's part of the prefill is freed."""
    keys = [k[:, :, :p.a].clone() for k in p.view.keys]
    values = [v[:, :, :p.a].clone() for v in p.view.values]
    return Prepared(KVView(keys, values, p.a, p.view.specs), p.a, p.b, p.tail)


def answer_ids(tokenizer: Any, answer: str) -> torch.Tensor:
    """The answer's tokens followed by the tokenizer's end-of-turn (EOS) token."""
    from lcf.errors import LCFError

    if tokenizer.eos_token_id is None:
        raise LCFError("the receiver's tokenizer has no eos_token_id, so the answer's end cannot be trained")
    return torch.tensor(tokenizer(answer.strip(), add_special_tokens=False).input_ids + [tokenizer.eos_token_id])
