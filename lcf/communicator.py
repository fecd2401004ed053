"""Communicator: frozen sharer(s) + frozen receiver + trainable translator(s).

Training forward (C2C protocol, arXiv 2510.03215): every sharer prefills its prompt; the receiver
prefills all prompt tokens but the last; each translator edits the receiver cache at the aligned
prompt positions; the receiver then runs the last prompt token and the response on the fused cache,
and the loss is next-token cross-entropy on response tokens only. Prefills never compute LM-head
logits. Generated tokens are never fused.

Batches are dicts of tensors (see ``lcf.data.instruct.collate``): receiver prompts LEFT-padded,
responses RIGHT-padded, ``align_index``/``align_mask`` mapping receiver prompt positions to
positions of the padded sharer prompt. For several sharers, ``batch["sharers"]`` is a list of dicts
with keys ``prompt_ids, prompt_mask, align_index, align_mask`` (one per sharer, in order).

The frozen LLMs are deliberately *not* registered as submodules: ``state_dict()``, optimizers and
checkpoints hold only translator weights, while ``.to()`` still moves the LLMs along.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lcf.errors import LCFError
from lcf.models.kv import KVView, prefill

Combine = Literal["sequential", "sum"]
SharerTransform = Callable[[int, KVView], KVView]


@dataclass
class SharerInputs:
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    align_index: torch.Tensor
    align_mask: torch.Tensor


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: 0.. over real tokens, 0 on padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class Communicator(nn.Module):
    def __init__(
        self,
        receiver: nn.Module,
        sharers: Sequence[nn.Module],
        translators: Sequence[nn.Module],
        combine: Combine = "sequential",
    ):
        super().__init__()
        if len(sharers) != len(translators) or not sharers:
            raise LCFError(
                f"Communicator needs one translator per sharer; got {len(sharers)} sharers and "
                f"{len(translators)} translators"
            )
        if combine not in ("sequential", "sum"):
            raise LCFError(f"combine must be 'sequential' or 'sum', got {combine!r}")
        self.translators = nn.ModuleList(translators)
        self.combine = combine
        # plain attributes: not parameters of this module (see the module docstring)
        self.__dict__["receiver"] = receiver
        self.__dict__["sharers"] = list(sharers)
        for m in (receiver, *sharers):
            m.eval().requires_grad_(False)

    # frozen LLMs follow .to()/.cuda()/.half() but stay out of parameters() and state_dict()
    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for m in (self.receiver, *self.sharers):
            m._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        for m in (self.receiver, *self.sharers):
            m.eval()  # frozen LLMs: no dropout, ever
        return self

    @property
    def translator(self) -> nn.Module:
        return self.translators[0]

    # -- pieces ------------------------------------------------------------------------------
    def sharer_inputs(self, batch: dict) -> list[SharerInputs]:
        if "sharers" in batch:
            items = [SharerInputs(**s) for s in batch["sharers"]]
        else:
            items = [SharerInputs(batch["sharer_prompt_ids"], batch["sharer_prompt_mask"], batch["align_index"],
                                  batch["align_mask"])]
        if len(items) != len(self.sharers):
            raise LCFError(f"batch carries inputs for {len(items)} sharers, the communicator has {len(self.sharers)}")
        return items

    @torch.no_grad()
    def _prefill(self, model, ids: torch.Tensor, mask: torch.Tensor) -> KVView:
        return prefill(model, ids, attention_mask=mask, position_ids=positions_from_mask(mask))

    def fused_prompt_cache(self, batch: dict, fuse: bool = True, sharer_transform: SharerTransform | None = None) -> KVView:
        """Receiver KVView of all prompt tokens but the last, with the sharers' caches fused in.

        ``sharer_transform(i, view)`` may replace sharer ``i``'s cache before translation (the
        evaluation's controls use it: an all-zero cache, or another item's cache)."""
        ids, mask = batch["receiver_prompt_ids"], batch["receiver_prompt_mask"]
        if ids.shape[1] < 2:
            raise LCFError("receiver prompts need at least 2 tokens (all but the last are fused)")
        base = self._prefill(self.receiver, ids[:, :-1], mask[:, :-1])
        if not fuse:
            return base
        view = base
        deltas = []
        for i, (sharer, translator, inp) in enumerate(zip(self.sharers, self.translators, self.sharer_inputs(batch))):
            s_view = self._prefill(sharer, inp.prompt_ids, inp.prompt_mask)
            if sharer_transform is not None:
                s_view = sharer_transform(i, s_view)
            index, amask = inp.align_index[:, :-1], inp.align_mask[:, :-1].bool() & mask[:, :-1].bool()
            if self.combine == "sequential":
                view = translator.fuse(s_view, view, index, amask)
            else:
                deltas.append(translator.fuse(s_view, base, index, amask))
        if self.combine == "sum":
            keys = [base.keys[i] + sum(d.keys[i] - base.keys[i] for d in deltas) for i in range(base.num_layers)]
            values = [base.values[i] + sum(d.values[i] - base.values[i] for d in deltas) for i in range(base.num_layers)]
            view = KVView(keys, values, base.seq_len, base.specs)
        return view

    # -- training ----------------------------------------------------------------------------
    def forward(self, batch: dict, fuse: bool = True, sharer_transform: SharerTransform | None = None) -> dict[str, torch.Tensor]:
        """Response-token cross-entropy: {'loss': mean over tokens, 'loss_sum', 'tokens'} plus per
        example 'row_loss_sum' and 'row_tokens' (B,), e.g. for scoring options by log-likelihood."""
        view = self.fused_prompt_cache(batch, fuse=fuse, sharer_transform=sharer_transform)
        logits = self.continue_logits(batch, view)
        target, tmask = batch["response_ids"], batch["response_mask"].bool()
        logp = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="none"
        ).view_as(target)
        row = (logp * tmask).sum(-1)
        tokens = tmask.sum()
        loss_sum = row.sum()
        return {"loss": loss_sum / tokens.clamp(min=1), "loss_sum": loss_sum.detach(), "tokens": tokens,
                "row_loss_sum": row.detach(), "row_tokens": tmask.sum(-1)}

    def continue_logits(self, batch: dict, view: KVView) -> torch.Tensor:
        """Receiver logits over [last prompt token, response...] on top of ``view``."""
        p_ids, p_mask = batch["receiver_prompt_ids"], batch["receiver_prompt_mask"]
        r_ids, r_mask = batch["response_ids"], batch["response_mask"]
        inp = torch.cat([p_ids[:, -1:], r_ids], dim=1)
        attn = torch.cat([p_mask, r_mask], dim=1)
        start = p_mask.long().sum(-1, keepdim=True) - 1
        pos = start + torch.arange(inp.shape[1], device=inp.device)
        out = self.receiver(input_ids=inp, attention_mask=attn, past_key_values=view.to_cache(self.receiver),
                            position_ids=pos, use_cache=True)
        return out.logits

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict, *, fuse: bool = True, max_new_tokens: int = 64,
                 sharer_transform: SharerTransform | None = None, **generate_kwargs) -> torch.Tensor:
        """New token ids (B, <= max_new_tokens) for the prompts of ``batch``; greedy by default."""
        view = self.fused_prompt_cache(batch, fuse=fuse, sharer_transform=sharer_transform)
        ids, mask = batch["receiver_prompt_ids"], batch["receiver_prompt_mask"]
        generate_kwargs.setdefault("do_sample", False)
        out = self.receiver.generate(
            input_ids=ids, attention_mask=mask, past_key_values=view.to_cache(self.receiver),
            max_new_tokens=max_new_tokens, **generate_kwargs,
        )
        return out[:, ids.shape[1]:]
