"""Training data for several sharers: one receiver prompt, each sharer's own prompt and alignment.

Each sharer has its tokenizer, template and token aligner, so the features are built once per sharer
by the dataset's own ``prepare`` and joined on the example (``source``, ``index``): an example kept for
every sharer is kept, one dropped for any sharer (e.g. a prompt too long in its tokenizer) is dropped.
Sharer 0 stays in the usual feature keys; the others go under ``more_sharers`` and :func:`collate_several`
turns them into ``batch["sharers"]`` (the layout :class:`lcf.communicator.Communicator` reads). Light
(torch only): the runtime uses it too; the Lightning data module is :mod:`lcf.several.datamodule`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lcf.data.features import collate, collate_prompts
from lcf.errors import LCFError

SHARER_FEATURE_KEYS = ("sharer_prompt_ids", "align_index", "align_mask")


def _key(feature: Mapping[str, Any]) -> tuple:
    if "source" not in feature or "index" not in feature:
        raise LCFError("several sharers: features need `source` and `index` to be joined across sharers; this "
                       "dataset's features have neither (use an instruction or eval-task dataset)")
    return feature["source"], feature["index"]


def join_sharer_features(per_sharer: Sequence[list[dict]]) -> list[dict]:
    """Features of sharer 0 with ``more_sharers`` (the others' prompt and alignment), for the examples every
    sharer kept, in sharer 0's order. Receiver prompts and responses must agree across sharers."""
    first, others = per_sharer[0], per_sharer[1:]
    by_key = [{_key(f): f for f in feats} for feats in others]
    out = []
    for f in first:
        k = _key(f)
        if not all(k in m for m in by_key):
            continue
        extra = []
        for i, m in enumerate(by_key, start=1):
            g = m[k]
            if g["receiver_prompt_ids"] != f["receiver_prompt_ids"] or g.get("response_ids") != f.get("response_ids"):
                raise LCFError(f"several sharers: example {k} has another receiver prompt or response for sharer "
                               f"{i} than for sharer 0; the receiver side must not depend on the sharer")
            extra.append({key: g[key] for key in SHARER_FEATURE_KEYS})
        out.append(f | {"more_sharers": extra})
    return out


def collate_several(features: Sequence[Mapping[str, Any]], receiver_pad_id: int,
                    sharer_pad_ids: Sequence[int], *, with_response: bool = True) -> dict[str, torch.Tensor]:
    """:func:`lcf.data.features.collate` plus ``batch["sharers"]``: one dict (``prompt_ids``, ``prompt_mask``,
    ``align_index``, ``align_mask``) per sharer, each padded with its own pad id."""
    batch = (collate if with_response else collate_prompts)(features, receiver_pad_id, sharer_pad_ids[0])
    sharers = [_sharer_part(batch)]
    for i, pad in enumerate(sharer_pad_ids[1:]):
        rows = []
        for j, f in enumerate(features):
            more = f.get("more_sharers") or []
            if len(more) <= i:
                raise LCFError(f"collate: feature {j} has inputs for {1 + len(more)} sharers, the batch needs "
                               f"{len(sharer_pad_ids)}")
            rows.append({"receiver_prompt_ids": f["receiver_prompt_ids"], **more[i]})
        sharers.append(_sharer_part(collate_prompts(rows, receiver_pad_id, pad)))
    batch["sharers"] = sharers
    return batch


def _sharer_part(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"prompt_ids": batch["sharer_prompt_ids"], "prompt_mask": batch["sharer_prompt_mask"],
            "align_index": batch["align_index"], "align_mask": batch["align_mask"]}
