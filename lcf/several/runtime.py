"""Adapters with several sharers (exported from a recipe with a ``sharers:`` list).

The config keeps sharer 0 in its top-level keys and lists every sharer under ``sharers`` (translator,
shapes, layer map, token alignment, template, identity); translator ``i``'s tensors are stored under
``sharers.<i>.`` in ``adapter.safetensors``. One-sharer adapters have neither and are unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lcf.runtime.format import SHARERS_PREFIX, AdapterError


@dataclass
class SharerSide:
    """A sharer beyond the first: its loaded model, token aligner and template."""

    model: Any  # LoadedModel
    aligner: Any
    template: str = "auto"


def batch_to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """``batch`` on ``device``, including the per-sharer dicts of ``batch["sharers"]``."""
    out = {k: v.to(device) for k, v in batch.items() if k != "sharers"}
    if "sharers" in batch:
        out["sharers"] = [{k: v.to(device) for k, v in s.items()} for s in batch["sharers"]]
    return out


def sharer_configs(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``sharers`` entries of a config with more than one sharer, else []."""
    entries = cfg.get("sharers") or []
    return list(entries) if len(entries) > 1 else []


def sharer_states(cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Translator tensors per sharer: ``[state]`` for one sharer, else split by the ``sharers.<i>.`` prefixes."""
    entries = sharer_configs(cfg)
    if not entries:
        stray = sorted(k for k in state if k.startswith(SHARERS_PREFIX))
        if stray:
            raise AdapterError(f"adapter file holds several-sharer tensors {stray[:3]} but its config lists no "
                               f"`sharers`; re-export the adapter")
        return [state]
    out: list[dict[str, torch.Tensor]] = [{} for _ in entries]
    for key, value in state.items():
        head, _, rest = key[len(SHARERS_PREFIX):].partition(".")
        if not key.startswith(SHARERS_PREFIX) or not head.isdigit() or int(head) >= len(entries):
            raise AdapterError(f"adapter tensor {key!r} belongs to no sharer: a {len(entries)}-sharer adapter stores "
                               f"every translator tensor under '{SHARERS_PREFIX}<i>.' (i < {len(entries)}); re-export it")
        out[int(head)][rest] = value
    return out


def translator_config(cfg: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A one-sharer view of ``cfg`` for one ``sharers`` entry (what the translator builder reads)."""
    return cfg | {"translator": entry["translator"], "shapes": entry["shapes"]}


def more_sharer_features(messages: Sequence[dict], receiver: Any, sides: Sequence[SharerSide],
                         receiver_template: str, receiver_ids: list[int]) -> list[dict[str, list]]:
    """Prompt and alignment of the sharers beyond the first, for one prompt (``more_sharers`` features)."""
    from lcf.data.features import prompt_features

    out = []
    for i, side in enumerate(sides, start=1):
        f = prompt_features(side.aligner.align_messages(
            receiver.tokenizer, side.model.tokenizer, messages,
            receiver_template=receiver_template, sharer_template=side.template))
        if f["receiver_prompt_ids"] != receiver_ids:
            raise AdapterError(f"sharer {i}'s alignment produced another receiver prompt than sharer 0's")
        out.append({k: f[k] for k in ("sharer_prompt_ids", "align_index", "align_mask")})
    return out
