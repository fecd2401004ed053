"""Length limits from each model's config, checked before any compute.

A prompt longer than a model's ``max_position_embeddings`` would run for minutes in the prefill and
then answer from positions the model was never trained on; these helpers refuse it with the limit and
the options instead. :func:`truncate_text` is the explicit way to cut a text to a budget.
"""
from __future__ import annotations

from typing import Any

import torch

from lcf.errors import LCFError


class LengthError(LCFError, ValueError):
    """A prompt, context or message longer than a model can attend to."""


def position_limit(config: Any) -> int | None:
    """The number of positions a model attends to (``max_position_embeddings`` of its text config), or None."""
    if config is None:
        return None
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_length(what: str, tokens: int, model: Any, *, new_tokens: int = 0, options: str = "") -> None:
    """Refuse ``tokens`` (+ ``new_tokens`` to generate) positions where ``model`` (a transformers model or
    its config) attends to fewer; ``what`` names the text ("receiver prompt 2"), ``options`` the ways out."""
    config = getattr(model, "config", model)
    limit = position_limit(config)
    if limit is None or tokens + new_tokens <= limit:
        return
    name = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "model")
    asked = f"{tokens} tokens" + (f" + {new_tokens} new tokens" if new_tokens else "")
    room = max(limit - new_tokens, 0)
    raise LengthError(
        f"the {what} has {asked}, more than the {limit} positions {name} attends to (max_position_embeddings in "
        f"its config); nothing was computed. "
        + (options or f"Shorten it to at most {room} tokens (lcf.runtime.limits.truncate_text(tokenizer, text, "
                      f"{room}) keeps its end){' or lower max_new_tokens' if new_tokens else ''}.")
    )


def check_batch_lengths(batch: dict[str, Any], receiver: Any, sharers: list[Any], *, new_tokens: int = 0,
                        options: str = "") -> None:
    """The receiver prompts (plus ``new_tokens``) and every sharer's prompts of an encoded batch
    (``receiver_prompt_mask``, ``sharer_prompt_mask``, and ``sharers[i]`` for sharers beyond the first)."""
    def longest(mask: torch.Tensor | None) -> tuple[int, int]:
        if mask is None or mask.numel() == 0:
            return 0, 0
        lengths = mask.long().sum(dim=1)
        i = int(lengths.argmax())
        return int(lengths[i]), i

    n, i = longest(batch.get("receiver_prompt_mask"))
    check_length(f"receiver prompt {i}", n, receiver, new_tokens=new_tokens, options=options)
    masks = [batch.get("sharer_prompt_mask")] + [s.get("sharer_prompt_mask") for s in batch.get("sharers") or []]
    for j, (mask, model) in enumerate(zip(masks, sharers)):
        n, i = longest(mask)
        check_length(f"sharer {j}'s prompt {i}", n, model, options=options)


def truncate_text(tokenizer: Any, text: str, max_tokens: int, *, keep: str = "end") -> str:
    """``text`` cut to at most ``max_tokens`` tokens of ``tokenizer``, keeping its ``end`` (default: a
    question usually comes last) or its ``start``. The chat template adds a few tokens on top."""
    if keep not in ("end", "start"):
        raise LCFError(f"truncate_text: keep must be 'end' or 'start', got {keep!r}")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= max_tokens:
        return text
    if max_tokens <= 0:
        return ""
    if keep == "end":
        return text[offsets[len(offsets) - max_tokens][0]:]
    return text[:offsets[max_tokens - 1][1]]
