"""The evaluation's controls for adapters: what the fused receiver reads instead of its own sharer cache.

* ``"zero"`` — an all-zero sharer cache of the same layout (:func:`zero_sharer_cache`).
* ``"mismatched"`` — the sharer prompt of another item (:func:`mismatch_partner`), with the item's own
  alignment clipped to that prompt's length (:func:`control_features`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lcf.errors import LCFError
from lcf.models.kv import KVView


def mismatch_partner(prompts: Sequence[str], i: int) -> int:
    """The item whose sharer cache the ``"mismatched"`` control fuses into item ``i``: the first of
    ``i+1, i+2, ...`` (mod n) with a different prompt text, so an item never reads its own cache
    (nor that of a duplicate of itself). Raises when every prompt is the same (or n == 1)."""
    n = len(prompts)
    for step in range(1, n):
        j = (i + step) % n
        if prompts[j] != prompts[i]:
            return j
    raise LCFError(
        "the 'mismatched' control fuses another item's sharer cache, but every item has the same prompt "
        f"({n} item(s)); evaluate at least 2 distinct items, or leave the control out"
    )


def zero_sharer_cache(_: int, view: KVView) -> KVView:
    """Sharer transform of the ``"zero"`` control: an all-zero cache of the same layout."""
    return KVView([torch.zeros_like(k) for k in view.keys], [torch.zeros_like(v) for v in view.values],
                  view.seq_len, view.specs)


def control_features(control: str, own: list[dict[str, Any]], prompts: Sequence[str]) -> list[dict[str, Any]]:
    """Prompt features of a control from the items' own ones (each records ``sharer_source``, the item
    whose sharer prompt it reads): for ``"mismatched"`` each item takes its partner's sharer prompt."""
    for i, f in enumerate(own):
        f["sharer_source"] = i
    if control != "mismatched":
        return own
    out = []
    for i, f in enumerate(own):
        j = mismatch_partner(prompts, i)
        other = own[j]["sharer_prompt_ids"]
        last = len(other) - 1
        out.append(f | {
            "sharer_prompt_ids": list(other),
            "align_index": [min(s, last) if m else 0 for s, m in zip(f["align_index"], f["align_mask"])],
            "sharer_source": j,
        })
    return out
