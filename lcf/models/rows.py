"""Per-token rows of a decoder's cache: a prompt cut around a context, rotary phase undone and redone per
layer, and greedy decoding on top of a cache assembled by hand.

These are the pieces shared by ``lcf.token_map`` (the sharer's cache, translated token by token), the
runtime of per-token messages (``lcf.runtime.token_kv``) and the experiments that led to them
(``experiments/cache_ceiling``: the receiver's own cache, compressed). One row holds one token's keys
(rotary phase undone) and values of every layer, heads flattened: ``sum over layers of 2 * kv_heads *
head_dim`` numbers. Needs only torch and transformers.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lcf.errors import LCFError
from lcf.models.kv import KVView, cache_kwargs, decoder, prefill

Rope = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Prepared:
    """One item's receiver prompt cut around its context: ``head`` = positions [0, a), the context
    = [a, b), ``tail`` = the token ids after it; ``view`` = the cache of [0, b)."""

    view: KVView
    a: int
    b: int
    tail: torch.Tensor


@dataclass
class Span:
    """The receiver's prompt of ``question`` after ``context``, tokenized: ``ids``, the context's tokens
    ``[a, b)`` (every token that overlaps it) and the prompt text with the context's character offset."""

    ids: list[int]
    a: int
    b: int
    text: str
    start: int


def context_span(tokenizer: Any, question: str, context: str, template: str = "auto",
                 receiver_context: str = "") -> Span:
    """Tokenize the receiver's ``receiver + full context`` prompt and locate the context's tokens in it.
    ``receiver_context`` (text the receiver holds itself) comes first, then ``context``, then the question."""
    from lcf.align.templates import format_messages
    from lcf.data.xc.features import encode_prompt, receiver_message

    context, own = context.strip(), receiver_context.strip()
    message = receiver_message(question, f"{own}\n\n{context}" if own else context)
    text = format_messages(tokenizer, [{"role": "user", "content": message}], template).text
    at = text.rfind(message)  # the context sits at a known offset of the message, not wherever its text recurs
    if not context or at < 0 or not message.startswith(f"{own}\n\n{context}" if own else context):
        raise LCFError("the context is empty or does not occur verbatim in the receiver's prompt (did the template "
                       "rewrite it?); per-token rows need the context's own tokens in the prompt")
    start = at + (len(own) + 2 if own else 0)
    end = start + len(context)
    ids, offsets, special = encode_prompt(tokenizer, text)
    inside = [i for i, (s, e) in enumerate(offsets) if not special[i] and e > s and s < end and e > start]
    a, b = inside[0], inside[-1] + 1
    if b >= len(ids):
        raise LCFError("nothing follows the context in the prompt; the question must come after it")
    return Span(ids, a, b, text, start)


class WindowError(LCFError):
    """A prompt longer than a sliding-window layer's window: its cache no longer holds every position."""


def check_window(view: KVView, who: str, length: int) -> None:
    """Refuse a cache whose sliding-window layers no longer hold every position of the prompt."""
    if any(view.length(i) != view.seq_len for i in range(view.num_layers)):
        raise WindowError(f"the {who}'s prompt ({length} tokens) is longer than the window of one of its "
                          f"sliding-window layers, so its cache no longer holds every context token; per-token rows "
                          f"need every position cached (use shorter contexts)")


def prefill_every_position(model: Any, ids: torch.Tensor) -> KVView:
    """The cache of ``ids`` (1, n) with every position kept on every layer: one pass when the prompt fits the
    shortest sliding window (or no layer slides), else chunks copied out before they are evicted
    (:func:`lcf.models.capture.prefill_all_positions`; the same K/V as one pass, stored whole)."""
    from lcf.models.capture import capture_chunk, prefill_all_positions

    limit = capture_chunk(model.config)
    if limit is None or ids.shape[1] <= limit:
        return prefill(model, ids)
    return prefill_all_positions(model, ids, chunk=limit)


@torch.no_grad()
def question_only(model: Any, tokenizer: Any, question: str, own_context: str = "", template: str = "auto"
                  ) -> tuple[KVView, int, torch.Tensor]:
    """The receiver's prompt of ``question`` after the text it holds itself (no sharer context), prefilled but
    for its last token: (cache, start of the tail, tail), ready for :func:`greedy`."""
    from lcf.align.templates import format_messages
    from lcf.data.xc.features import encode_prompt, receiver_message

    text = format_messages(tokenizer, [{"role": "user", "content": receiver_message(question, own_context)}],
                           template).text
    ids = torch.tensor([encode_prompt(tokenizer, text)[0]], device=model.device)
    return prefill(model, ids[:, :-1]), ids.shape[1] - 1, ids[0, -1:]


def prepare_item(model: Any, tokenizer: Any, question: str, context: str, template: str = "auto",
                 span: Span | None = None) -> Prepared:
    """Prefill the receiver on its ``receiver + full context`` prompt up to the end of the context."""
    span = span or context_span(tokenizer, question, context, template)
    ids_t = torch.tensor([span.ids], device=model.device)
    with torch.no_grad():
        view = prefill(model, ids_t[:, :span.b])
    check_window(view, "receiver", span.b)
    return Prepared(view, span.a, span.b, ids_t[0, span.b:])


@torch.no_grad()
def sharer_rows(sharer: Any, sharer_tokenizer: Any, rope: Rope, receiver_tokenizer: Any, span: Span, context: str,
                sharer_template: str = "auto") -> torch.Tensor:
    """The sharer's rows (T, Ds) for the receiver's context tokens ``span.a .. span.b``: the sharer reads the
    context alone in its own prompt (as LCF-X's sharer does); each receiver token takes the sharer token
    that covers most of its characters. Contexts longer than a sliding window are prefilled in chunks so that
    every position's K/V is kept (:func:`prefill_every_position`)."""
    from lcf.align.templates import format_messages
    from lcf.align.tokens import align_texts, auto_special_tokens
    from lcf.data.xc.features import encode_prompt

    rt, st, body = receiver_tokenizer, sharer_tokenizer, context.strip()
    s_text = format_messages(st, [{"role": "user", "content": context}], sharer_template).text
    s_ids = encode_prompt(st, s_text)[0]
    al = align_texts(rt, st, span.text, s_text, segments=[(span.start, s_text.find(body), len(body))],
                     add_special_tokens=(auto_special_tokens(rt, span.text), auto_special_tokens(st, s_text)))
    if len(al) != len(span.ids) or not bool(al.mask[span.a:span.b].all()):
        raise LCFError("the context's receiver tokens do not all align to sharer tokens; check the templates")
    view = prefill_every_position(sharer, torch.tensor([s_ids], device=sharer.device))
    index = al.sharer_index[span.a:span.b].to(sharer.device)
    return flat_kv(view, rope, torch.arange(len(s_ids), device=sharer.device), index)


def turn(k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., T, D) keys by the rotary angles of their positions (negate ``sin`` to undo)."""
    half = k.shape[-1] // 2
    return k * cos + torch.cat([-k[..., half:], k[..., :half]], dim=-1) * sin


def batch_views(views: Sequence[KVView]) -> tuple[KVView, list[int]]:
    """Left-pad single-row views to one batch; returns it and each row's number of padded positions."""
    n = max(v.seq_len for v in views)
    pads = [n - v.seq_len for v in views]
    if len(views) == 1:
        return views[0], pads  # nothing to pad: no copy of the cache

    def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(t, (0, 0, pad, 0)) for t, pad in zip(tensors, pads)])

    layers = range(views[0].num_layers)
    return KVView([stack([v.keys[i] for v in views]) for i in layers],
                  [stack([v.values[i] for v in views]) for i in layers], n, views[0].specs), pads


@torch.no_grad()
def greedy(model: Any, views: Sequence[KVView], tails: Sequence[torch.Tensor], starts: Sequence[int],
           max_new_tokens: int, stop: set[int]) -> list[list[int]]:
    """Greedy tokens per row after running ``tails[i]`` at positions starts[i], starts[i] + 1, ... on top of
    ``views[i]``. Rows are batched: caches and tails are left-padded, padding masked out."""
    view, pads = batch_views(views)
    dev, width = tails[0].device, max(len(t) for t in tails)
    ids = torch.zeros(len(tails), width, dtype=torch.long, device=dev)
    mask = torch.zeros(len(tails), view.seq_len + width, dtype=torch.long, device=dev)
    pos = torch.zeros(len(tails), width, dtype=torch.long, device=dev)
    for r, (tail, start, pad) in enumerate(zip(tails, starts, pads)):
        ids[r, width - len(tail):] = tail
        mask[r, pad:view.seq_len] = 1
        mask[r, view.seq_len + width - len(tail):] = 1
        pos[r] = torch.arange(start + len(tail) - width, start + len(tail)).clamp(min=0)
    cache = view.to_cache(model)
    last = last_logits_only(model)  # read once, not at every step
    out: list[list[int]] = [[] for _ in tails]
    done = [False] * len(tails)
    for _ in range(max_new_tokens):
        res = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True, **cache_kwargs(model, cache),
                    **last)
        nxt = res.logits[:, -1].argmax(-1)  # the cache object is updated in place
        for r, t in enumerate(nxt.tolist()):
            done[r] = done[r] or t in stop
            if not done[r]:
                out[r].append(t)
        if all(done):
            break
        ids, pos = nxt[:, None], pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones(len(tails), 1, dtype=torch.long, device=dev)], dim=1)
    return out


def last_logits_only(model: Any) -> dict[str, int]:
    """``{"logits_to_keep": 1}`` where the model's forward takes it (the LM head on the last position only)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-turn ids: the tokenizer's EOS and the model's generation-config EOS (one id or a list)."""
    stop: set[int] = set()
    for t in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        stop |= set(t) if isinstance(t, (list, tuple)) else ({t} if t is not None else set())
    return stop


def layer_rope(model: Any) -> Rope:
    """(positions (T,), layer) -> rotary (cos, sin), each (T, head_dim), for models whose layers may use
    different rotary bases (Gemma-3: local and global layers)."""
    emb = getattr(decoder(model), "rotary_emb", None)
    if emb is None:
        raise LCFError(f"{type(model).__name__} has no decoder.rotary_emb; per-token rows need rotary positions")
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = getattr(cfg, "layer_types", None)
    typed = "layer_type" in inspect.signature(emb.forward).parameters
    dtype = next(model.parameters()).dtype

    def fn(positions: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        probe = torch.zeros(1, dtype=dtype, device=positions.device)
        cos, sin = emb(probe, positions[None], types[layer]) if typed and types else emb(probe, positions[None])
        return cos[0], sin[0]
    return fn


def flat_kv(view: KVView, rope: Rope, positions: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of every layer's [K | V] (heads flattened, keys without their rotary phase) -> (T, dim)."""
    parts = []
    for layer in range(view.num_layers):
        k, v = view.layer(layer)
        cos, sin = rope(positions[index], layer)
        k = turn(k[0][:, index], cos, -sin)
        parts += [k.transpose(0, 1).flatten(1), v[0][:, index].transpose(0, 1).flatten(1)]
    return torch.cat(parts, dim=1)


def unflat_kv(rows: torch.Tensor, p: Prepared, rope: Rope) -> tuple[KVView, int]:
    """Inverse of :func:`flat_kv` placed at the context's positions: [head; rows as K/V], tail start."""
    t, need = rows.shape[0], sum(2 * spec.kv_heads * spec.head_dim for spec in p.view.specs)
    if rows.shape[1] != need:
        raise LCFError(f"translated rows have {rows.shape[1]} columns; the receiver's layers need {need}")
    positions = torch.arange(p.a, p.a + t, device=rows.device)
    keys, values, at = [], [], 0
    for layer, spec in enumerate(p.view.specs):
        width = spec.kv_heads * spec.head_dim
        k, v = (rows[:, at + i * width: at + (i + 1) * width].view(t, spec.kv_heads, spec.head_dim)
                .transpose(0, 1)[None] for i in (0, 1))
        at += 2 * width
        cos, sin = rope(positions, layer)
        hk, hv = p.view.layer(layer)
        keys.append(torch.cat([hk[:, :, :p.a], turn(k, cos, sin).to(hk.dtype)], dim=2))
        values.append(torch.cat([hv[:, :, :p.a], v.to(hv.dtype)], dim=2))
    return KVView(keys, values, p.a + t, p.view.specs), p.a + t
