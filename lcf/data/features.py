"""Turn one instruction example into training features, and features into padded batches.

A feature dict holds plain Python lists (cheap to pickle into DataLoader workers):

``receiver_prompt_ids``  the receiver prompt (its template, generation prompt included) — equal to
                         the aligner's ``receiver_ids``
``sharer_prompt_ids``    the same messages in the sharer's template — the aligner's ``sharer_ids``
``align_index``          per receiver prompt position, the sharer position it reads (0 where masked)
``align_mask``           per receiver prompt position, whether fusion applies
``response_ids``         the response followed by the receiver's end-of-turn, truncated
``source``, ``index``    where the example came from (ignored by :func:`collate`)

:func:`collate` pads a list of features into the batch layout ``lcf.communicator`` reads.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lcf.align.templates import ChatTemplateError, TemplateName, format_messages, tokenizer_label
from lcf.errors import LCFError

#: The keys :func:`collate` returns, in order.
BATCH_KEYS: tuple[str, ...] = (
    "receiver_prompt_ids", "receiver_prompt_mask", "sharer_prompt_ids", "sharer_prompt_mask",
    "align_index", "align_mask", "response_ids", "response_mask",
)

# Drop reasons reported by :func:`featurize`.
DROP_PROMPT = "prompt longer than max_prompt_tokens"
DROP_EMPTY = "empty response"


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id; raise ``LCFError`` when it has neither."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise LCFError(
        f"tokenizer {tokenizer_label(tokenizer)} has neither a pad nor an eos token, so batches cannot be padded; "
        f"set tokenizer.pad_token (e.g. tokenizer.pad_token = tokenizer.unk_token)."
    )


def end_of_turn_text(tokenizer: Any, prompt_text: str, messages: Sequence[Mapping[str, str]], response: str,
                     template: TemplateName) -> str:
    """The response as the receiver should generate it: content plus the template's end-of-turn.

    The end-of-turn is what the template renders after the assistant content (``"<|im_end|>"``
    for ChatML; trailing whitespace dropped, since generation stops at that token); the plain
    template — or a chat template that adds nothing — ends with the tokenizer's eos token; the raw
    template adds nothing.
    """
    full = format_messages(tokenizer, [*messages, {"role": "assistant", "content": response}], template,
                           add_generation_prompt=False)
    if not full.text.startswith(prompt_text):
        raise ChatTemplateError(
            f"the template of {tokenizer_label(tokenizer)} does not render the prompt (with generation prompt) as a "
            f"prefix of the conversation including the response, so the response tokens cannot be separated. "
            f"Prompt ends with {prompt_text[-40:]!r}. Use receiver_template='plain' or fix the chat template."
        )
    content_end = full.spans[-1][1]
    suffix = full.text[content_end:].rstrip()
    if not suffix and template != "raw":  # raw text ends where its content ends (lm-eval's continuations)
        suffix = getattr(tokenizer, "eos_token", None) or ""
    return full.text[len(prompt_text):content_end] + suffix


def featurize(
    messages: Sequence[Mapping[str, str]],
    response: str,
    receiver_tokenizer: Any,
    sharer_tokenizer: Any,
    aligner: Any,
    *,
    receiver_template: TemplateName = "auto",
    sharer_template: TemplateName = "auto",
    max_prompt_tokens: int = 256,
    max_response_tokens: int = 128,
) -> dict[str, Any] | str:
    """Features of one example, or the reason it was dropped (:data:`DROP_PROMPT`, :data:`DROP_EMPTY`)."""
    if not response.strip():
        return DROP_EMPTY
    alignment = aligner.align_messages(
        receiver_tokenizer, sharer_tokenizer, messages,
        receiver_template=receiver_template, sharer_template=sharer_template,
    )
    if len(alignment.receiver_ids) > max_prompt_tokens or len(alignment.sharer_ids) > max_prompt_tokens:
        return DROP_PROMPT
    text = end_of_turn_text(receiver_tokenizer, alignment.receiver_text, messages, response, receiver_template)
    response_ids = list(receiver_tokenizer(text, add_special_tokens=False)["input_ids"])[:max_response_tokens]
    if not response_ids:
        return DROP_EMPTY
    return prompt_features(alignment) | {"response_ids": response_ids}


def prompt_features(alignment: Any) -> dict[str, list]:
    """The prompt part of a feature dict, from a :class:`~lcf.align.tokens.TokenAlignment`."""
    mask = alignment.mask.tolist()
    return {
        "receiver_prompt_ids": alignment.receiver_ids.tolist(),
        "sharer_prompt_ids": alignment.sharer_ids.tolist(),
        "align_index": [i if m else 0 for i, m in zip(alignment.sharer_index.tolist(), mask)],
        "align_mask": mask,
    }


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate_prompts(features: Sequence[Mapping[str, Any]], receiver_pad_id: int, sharer_pad_id: int,
                    pad_to_multiple: int = 1) -> dict[str, torch.Tensor]:
    """LEFT-pad the prompt part of ``features`` (receiver and sharer prompts, alignment), each side to its
    longest prompt rounded up to a multiple of ``pad_to_multiple``.

    ``align_index`` indexes the *padded* sharer row: each value is shifted by that row's sharer left
    padding, and is 0 wherever ``align_mask`` is False (including receiver padding). When the features
    carry ``sharer_span_ids`` (cross-context data), the batch also has ``sharer_span_ids`` (long),
    left-padded with -1 like ``sharer_prompt_ids``.
    """
    if not features:
        raise LCFError("collate: got an empty list of features; a batch needs at least one example")
    b = len(features)
    tp = _round_up(max(len(f["receiver_prompt_ids"]) for f in features), pad_to_multiple)
    ts = _round_up(max(len(f["sharer_prompt_ids"]) for f in features), pad_to_multiple)
    out = {
        "receiver_prompt_ids": torch.full((b, tp), receiver_pad_id, dtype=torch.long),
        "receiver_prompt_mask": torch.zeros(b, tp, dtype=torch.long),
        "sharer_prompt_ids": torch.full((b, ts), sharer_pad_id, dtype=torch.long),
        "sharer_prompt_mask": torch.zeros(b, ts, dtype=torch.long),
        "align_index": torch.zeros(b, tp, dtype=torch.long),
        "align_mask": torch.zeros(b, tp, dtype=torch.bool),
    }
    for i, f in enumerate(features):
        r_ids, s_ids = f["receiver_prompt_ids"], f["sharer_prompt_ids"]
        if not (len(f["align_index"]) == len(f["align_mask"]) == len(r_ids)):
            raise LCFError(
                f"collate: feature {i} has {len(r_ids)} receiver prompt ids but align_index/align_mask of length "
                f"{len(f['align_index'])}/{len(f['align_mask'])}; they must match (one entry per receiver position)"
            )
        r_pad, s_pad = tp - len(r_ids), ts - len(s_ids)
        out["receiver_prompt_ids"][i, r_pad:] = torch.tensor(r_ids, dtype=torch.long)
        out["receiver_prompt_mask"][i, r_pad:] = 1
        out["sharer_prompt_ids"][i, s_pad:] = torch.tensor(s_ids, dtype=torch.long)
        out["sharer_prompt_mask"][i, s_pad:] = 1
        mask = torch.tensor(f["align_mask"], dtype=torch.bool)
        index = torch.tensor(f["align_index"], dtype=torch.long) + s_pad
        out["align_mask"][i, r_pad:] = mask
        out["align_index"][i, r_pad:] = torch.where(mask, index, torch.zeros_like(index))
    with_spans = ["sharer_span_ids" in f for f in features]
    if any(with_spans):
        out["sharer_span_ids"] = _collate_span_ids(features, with_spans, ts)
    return out


def _collate_span_ids(features: Sequence[Mapping[str, Any]], with_spans: list[bool], ts: int) -> torch.Tensor:
    """``sharer_span_ids`` LEFT-padded with -1 to ``ts`` (the padded sharer prompt length)."""
    if not all(with_spans):
        raise LCFError(
            f"collate: features {[i for i, w in enumerate(with_spans) if not w]} lack 'sharer_span_ids' while others "
            f"have them; a batch must be all cross-context features (with span ids) or none"
        )
    out = torch.full((len(features), ts), -1, dtype=torch.long)
    for i, f in enumerate(features):
        spans, n = f["sharer_span_ids"], len(f["sharer_prompt_ids"])
        if len(spans) != n:
            raise LCFError(
                f"collate: feature {i} has {n} sharer prompt ids but {len(spans)} sharer_span_ids; they must match "
                f"(one span id per sharer position, -1 outside the context)"
            )
        out[i, ts - n:] = torch.tensor(spans, dtype=torch.long)
    return out


def collate(features: Sequence[Mapping[str, Any]], receiver_pad_id: int, sharer_pad_id: int,
            pad_to_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad features into a batch (keys :data:`BATCH_KEYS`): prompts LEFT-padded (see
    :func:`collate_prompts`) so generation continues from the right edge; responses RIGHT-padded with
    ``receiver_pad_id``. Masks are long 1/0 except ``align_mask`` (bool). ``pad_to_multiple``: every
    length rounded up to a multiple of it (fewer distinct shapes for compiled models).
    """
    out = collate_prompts(features, receiver_pad_id, sharer_pad_id, pad_to_multiple)
    b, tr = len(features), _round_up(max(len(f["response_ids"]) for f in features), pad_to_multiple)
    out["response_ids"] = torch.full((b, tr), receiver_pad_id, dtype=torch.long)
    out["response_mask"] = torch.zeros(b, tr, dtype=torch.long)
    for i, f in enumerate(features):
        resp = f["response_ids"]
        out["response_ids"][i, :len(resp)] = torch.tensor(resp, dtype=torch.long)
        out["response_mask"][i, :len(resp)] = 1
    if any("choice_ids" in f for f in features):
        out.update(collate_choices(features, receiver_pad_id))
        if all("sharer_choice_ids" in f for f in features):
            out["sharer_choice_ids"], out["sharer_choice_mask"] = pad_options(
                [f["sharer_choice_ids"] for f in features], out["choice_ids"].shape[1], sharer_pad_id)
    return out


def pad_options(options: Sequence[Sequence[Sequence[int]]], k: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of shape (B, k, L): each item's option token lists right-padded, missing options all pad."""
    length = max(len(ids) for item in options for ids in item)
    ids = torch.full((len(options), k, length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(options), k, length, dtype=torch.long)
    for i, item in enumerate(options):
        for j, tokens in enumerate(item):
            ids[i, j, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[i, j, :len(tokens)] = 1
    return ids, mask


def collate_choices(features: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Every option of each multiple-choice feature (``choice_ids``, ``choice_gold``, ``choice_chars``;
    see :mod:`lcf.training.options`): ids right-padded to (B, K, L), K the most options in the batch."""
    missing = [i for i, f in enumerate(features) if "choice_ids" not in f]
    if missing:
        raise LCFError(f"collate: features {missing} have no 'choice_ids' while others do; a batch must be all "
                       f"multiple-choice features with their options (data.choices: true) or none")
    b = len(features)
    k = max(len(f["choice_ids"]) for f in features)
    ids, mask = pad_options([f["choice_ids"] for f in features], k, pad_id)
    out = {"choice_ids": ids, "choice_mask": mask,
           "choice_valid": torch.zeros(b, k, dtype=torch.bool),
           "choice_gold": torch.tensor([int(f["choice_gold"]) for f in features], dtype=torch.long),
           "choice_chars": torch.ones(b, k, dtype=torch.long)}
    for i, f in enumerate(features):
        out["choice_valid"][i, :len(f["choice_ids"])] = True
        out["choice_chars"][i, :len(f["choice_ids"])] = torch.tensor(f["choice_chars"], dtype=torch.long)
    return out
