"""``span_pool``: LCF-X's two-stage attention pooling of a context cache (arXiv 2605.22863, Sec. LCF-X).

Per summarised sharer layer and KV head, two learned queries (``D`` numbers each):

1. the *span query* attends within each span of the context: span ``p`` gets
   ``K_p = sum_i a_i K_i`` and ``V_p = sum_i a_i V_i`` with ``a = softmax_i(q_span . K_i / sqrt(D))``
   over the positions ``i`` of span ``p``;
2. the *summary query* attends over the span summaries the same way and gives one ``(K, V)`` per
   layer per head: the summary the translator broadcasts to every receiver position.

Queries start at zero, i.e. as mean pooling. Nothing depends on the number of spans or on how they
were cut, so a compressor trained on paragraphs runs on sentences or fixed token blocks too.

``slots`` > 1 sends ``slots`` summary positions per layer and head instead of one (a richer message):
``slot_mode="spans"`` gives each of the first ``slots`` spans its own slot (later spans merge into
the last; unused slots are all zero), ``slot_mode="queries"`` learns ``slots`` summary queries. The
receiver then *reads* the slots: each receiver prompt position attends over the present slots with a
query projected from its own K/V (:meth:`SpanPool.read`), so the question's words can pick the slot
of the person they name. The read projection starts at zero, i.e. as the mean of the present slots.
With ``slots=1`` the module and its tensors are exactly those of the one-slot compressor.

``read="positions"`` is the other way to hand the slots over: *virtual tokens*. Slot ``j`` is written
into receiver prompt position ``first + read_offset + j`` (``first``: the row's first real position),
i.e. the translator fuses it into the K/V of one fixed prompt position of its own, and no other
position is edited. The receiver's attention then reads the slots as it reads any token, instead of
the message arriving as an edit of the question's K/V. Pick ``read_offset`` so that these positions
hold fixed template text (e.g. a chat template's system line): they must exist in every prompt.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lcf.compressors.base import Compressor
from lcf.data.spans import SPAN_SCHEMES
from lcf.errors import KVCacheError, RecipeError
from lcf.models.kv import KVView
from lcf.registry import compressors
from lcf.translators import stacked
from lcf.translators.base import PairShapes

SLOT_MODES = ("spans", "queries")
READ_MODES = ("attend", "positions")


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """softmax over ``dim`` where ``mask``; all-masked slices give all-zero weights (not NaN)."""
    scores = scores.masked_fill(~mask, float("-inf"))
    any_valid = mask.any(dim=dim, keepdim=True)
    weights = torch.softmax(torch.where(any_valid, scores, torch.zeros_like(scores)), dim=dim)
    return weights * mask


@compressors.register("span_pool")
class SpanPool(Compressor):
    """Two-stage learned-query pooling: spans, then one summary per layer per KV head.

    spans, span_tokens: how the context is cut into spans by default (``paragraph``, ``sentence`` or
        ``tokens`` of ``span_tokens`` tokens). Recorded in the adapter; any scheme works at run time.
    max_spans: spans beyond this many (per example) are merged into the last one (bounds memory).
    slots: summary positions per layer and head (1: the paper's single pooled summary).
    slot_mode: ``spans`` (one slot per span) or ``queries`` (``slots`` learned summary queries).
    read: how the receiver gets the slots: ``attend`` (each prompt position reads them through a learned
        query) or ``positions`` (slot j fused into prompt position ``read_offset + j``: virtual tokens).
    read_offset: first written position (counted from the row's first real token) in ``positions`` mode.
    """

    def __init__(self, shapes: PairShapes, spans: str = "paragraph", span_tokens: int = 32, max_spans: int = 64,
                 slots: int = 1, slot_mode: str = "spans", read: str = "attend", read_offset: int = 1):
        super().__init__(shapes)
        if spans not in SPAN_SCHEMES:
            raise RecipeError(f"span_pool: spans must be one of {', '.join(SPAN_SCHEMES)}, got {spans!r}")
        for name, value in (("span_tokens", span_tokens), ("max_spans", max_spans), ("slots", slots)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(f"span_pool: `{name}` must be an integer >= 1, got {value!r}")
        if slot_mode not in SLOT_MODES:
            raise RecipeError(f"span_pool: slot_mode must be one of {', '.join(SLOT_MODES)}, got {slot_mode!r}")
        if read not in READ_MODES:
            raise RecipeError(f"span_pool: read must be one of {', '.join(READ_MODES)}, got {read!r}")
        if isinstance(read_offset, bool) or not isinstance(read_offset, int) or read_offset < 0:
            raise RecipeError(f"span_pool: `read_offset` must be an integer >= 0, got {read_offset!r}")
        self.read_mode, self.read_offset = read, read_offset
        self.spans, self.span_tokens, self.max_spans = spans, span_tokens, max_spans
        self.slots, self.slot_mode = slots, slot_mode
        self.summary_len = slots
        self.span_query = nn.ParameterDict()
        self.summary_query = nn.ParameterDict()
        self.read_query = nn.ModuleDict()
        gen = torch.Generator().manual_seed(0)
        for s in self.sharer_layers:
            spec = shapes.sharer[s]
            self.span_query[str(s)] = nn.Parameter(torch.zeros(spec.kv_heads, spec.head_dim))
            if slots == 1:
                self.summary_query[str(s)] = nn.Parameter(torch.zeros(spec.kv_heads, spec.head_dim))
                continue
            if slot_mode == "queries":  # distinct starting queries, or every slot would stay the same
                q = torch.randn(slots, spec.kv_heads, spec.head_dim, generator=gen) * spec.head_dim ** -0.5
                self.summary_query[str(s)] = nn.Parameter(q)
            if read == "positions":
                continue
            t = self.reader_layer(s)
            r = shapes.receiver[t]
            read = nn.Linear(2 * r.kv_heads * r.head_dim, spec.kv_heads * spec.head_dim)
            nn.init.zeros_(read.weight)
            nn.init.zeros_(read.bias)
            self.read_query[str(s)] = read

    def reader_layer(self, sharer_layer: int) -> int:
        """The receiver layer whose K/V query the slots of ``sharer_layer``: the last one fused from it."""
        return max(t for t, s in enumerate(self.shapes.layer_map.sharer_of) if s == sharer_layer)

    def summarise_layer(self, layer, keys, values, span_ids):
        b, h, n, d = keys.shape
        dtype = self.span_query[str(layer)].dtype
        k, v = keys.to(dtype), values.to(dtype)
        per_span = self.slots > 1 and self.slot_mode == "spans"
        span_ids = span_ids.clamp(max=(self.slots if per_span else self.max_spans) - 1)
        p = int(span_ids.max().item()) + 1 if n and span_ids.numel() else 0
        if p <= 0:  # nothing of the context is stored: an all-zero summary
            zero = k.new_zeros(b, h, self.slots, d)
            return zero, zero
        member = span_ids.unsqueeze(1) == torch.arange(p, device=span_ids.device).view(1, p, 1)  # (B, P, N)
        scale = 1.0 / math.sqrt(d)
        scores = torch.einsum("bhnd,hd->bhn", k, self.span_query[str(layer)]) * scale  # (B, H, N)
        a = masked_softmax(scores.unsqueeze(2).expand(b, h, p, n), member.unsqueeze(1), dim=-1)  # (B, H, P, N)
        span_k = torch.einsum("bhpn,bhnd->bhpd", a, k)
        span_v = torch.einsum("bhpn,bhnd->bhpd", a, v)
        if per_span:  # spans are the slots (absent spans are all zero); pad to `slots`
            pad = (0, 0, 0, self.slots - p)
            return (torch.nn.functional.pad(span_k, pad).to(keys.dtype),
                    torch.nn.functional.pad(span_v, pad).to(values.dtype))
        present = member.any(-1)  # (B, P): spans with at least one stored position
        query = self.summary_query[str(layer)]
        query = query.unsqueeze(0) if query.dim() == 2 else query  # (S, H, D)
        scores2 = torch.einsum("bhpd,shd->bhsp", span_k, query) * scale
        a2 = masked_softmax(scores2, present.view(b, 1, 1, p).expand(b, h, query.shape[0], p), dim=-1)  # (B,H,S,P)
        out_k = torch.einsum("bhsp,bhpd->bhsd", a2, span_k)
        out_v = torch.einsum("bhsp,bhpd->bhsd", a2, span_v)
        return out_k.to(keys.dtype), out_v.to(values.dtype)

    def summarise_layers(self, layers, keys, values, span_ids):
        """:meth:`summarise_layer` of G layers at once: the same operators with a leading layer dimension."""
        g, b, h, n, d = keys.shape
        dtype = self.span_query[str(layers[0])].dtype
        k, v = keys.to(dtype), values.to(dtype)
        per_span = self.slots > 1 and self.slot_mode == "spans"
        span_ids = span_ids.clamp(max=(self.slots if per_span else self.max_spans) - 1)
        p = int(span_ids.max().item()) + 1 if n and span_ids.numel() else 0
        if p <= 0:
            zero = k.new_zeros(g, b, h, self.slots, d)
            return zero, zero
        member = span_ids.unsqueeze(1) == torch.arange(p, device=span_ids.device).view(1, p, 1)  # (B, P, N)
        scale = 1.0 / math.sqrt(d)
        span_q = torch.stack([self.span_query[str(i)] for i in layers])  # (G, H, D)
        scores = torch.einsum("gbhnd,ghd->gbhn", k, span_q) * scale
        a = masked_softmax(scores.unsqueeze(3).expand(g, b, h, p, n), member.view(1, b, 1, p, n), dim=-1)
        span_k = torch.einsum("gbhpn,gbhnd->gbhpd", a, k)
        span_v = torch.einsum("gbhpn,gbhnd->gbhpd", a, v)
        if per_span:
            pad = (0, 0, 0, self.slots - p)
            return (torch.nn.functional.pad(span_k, pad).to(keys.dtype),
                    torch.nn.functional.pad(span_v, pad).to(values.dtype))
        present = member.any(-1)  # (B, P)
        query = torch.stack([self.summary_query[str(i)] for i in layers])
        query = query.unsqueeze(1) if query.dim() == 3 else query  # (G, S, H, D)
        scores2 = torch.einsum("gbhpd,gshd->gbhsp", span_k, query) * scale
        a2 = masked_softmax(scores2, present.view(1, b, 1, 1, p).expand(g, b, h, query.shape[1], p), dim=-1)
        out_k = torch.einsum("gbhsp,gbhpd->gbhsd", a2, span_k)
        out_v = torch.einsum("gbhsp,gbhpd->gbhsd", a2, span_v)
        return out_k.to(keys.dtype), out_v.to(values.dtype)

    def read(self, summary: KVView, receiver: KVView, mask: torch.Tensor) -> tuple[KVView, torch.Tensor, torch.Tensor]:
        """What each receiver prompt position reads: one slot-attention row per position (slots > 1).

        summary: ``(B, H, slots, D)`` per summarised layer; receiver: the receiver's prompt cache
        (``T`` positions); mask: ``(B, T)`` real positions. Returns ``(view, align_index, align_mask)``
        for the translator: a view of ``T`` rows per summarised layer and the identity alignment.
        Slots that are all zero (absent spans, the zero control) are not read."""
        if self.read_mode == "positions":
            return self._read_positions(summary, mask)
        if self.slots == 1:
            return super().read(summary, receiver, mask)
        if self.stacked:
            return self._read_stacked(summary, receiver, mask)
        b, t = mask.shape
        keys, values = [], []
        for i, spec in enumerate(summary.specs):
            sk, sv = summary.keys[i], summary.values[i]
            if i not in self.sharer_layers:
                keys.append(sk[:, :, :0])
                values.append(sv[:, :, :0])
                continue
            read = self.read_query[str(i)]
            rk, rv = receiver.layer(self.reader_layer(i))
            rows = torch.cat([rk, rv], dim=-1).transpose(1, 2).reshape(b, rk.shape[2], -1)  # (B, Tr, Hr*2Dr)
            rows = torch.nn.functional.pad(rows, (0, 0, t - rows.shape[1], 0))  # a sliding layer keeps the last
            q = read(rows.to(read.weight.dtype)).view(b, t, spec.kv_heads, spec.head_dim)
            slot_k, slot_v = sk.to(q.dtype), sv.to(q.dtype)
            present = (slot_k.abs().sum(-1) > 0).any(1)  # (B, S)
            scores = torch.einsum("bthd,bhsd->bhts", q, slot_k) / math.sqrt(spec.head_dim)
            a = masked_softmax(scores, present.view(b, 1, 1, -1).expand_as(scores), dim=-1)
            keys.append(torch.einsum("bhts,bhsd->bhtd", a, slot_k).to(sk.dtype))
            values.append(torch.einsum("bhts,bhsd->bhtd", a, slot_v).to(sv.dtype))
        index = torch.arange(t, device=mask.device).expand(b, t)
        return KVView(keys, values, t, list(summary.specs)), index, mask.bool()

    def _read_positions(self, summary: KVView, mask: torch.Tensor) -> tuple[KVView, torch.Tensor, torch.Tensor]:
        """Virtual tokens: slot ``j`` goes to prompt position ``first + read_offset + j``, nothing else is edited."""
        b, t = mask.shape
        mask = mask.bool()
        first = mask.long().argmax(-1)  # (B,) first real position (left padding before it)
        real = mask.sum(-1)
        need = self.read_offset + self.summary_len
        if bool((real < need).any()):
            raise KVCacheError(f"span_pool (read=positions) writes {self.summary_len} slots from prompt position "
                               f"{self.read_offset} on, so every receiver prompt needs more than {need} tokens; the "
                               f"shortest has {int(real.min()) + 1}. Use a prompt template with a longer fixed "
                               f"preamble, or fewer slots / a smaller read_offset")
        slot = torch.arange(t, device=mask.device).view(1, t) - (first + self.read_offset).view(b, 1)
        amask = (slot >= 0) & (slot < self.summary_len) & mask
        return summary, slot.clamp(0, self.summary_len - 1), amask

    def _read_stacked(self, summary: KVView, receiver: KVView, mask: torch.Tensor):
        """:meth:`read` with the summarised layers of one shape (and reader-layer shape) in one batch."""
        b, t = mask.shape
        keys = [k[:, :, :0] for k in summary.keys]
        values = [v[:, :, :0] for v in summary.values]
        groups: dict[tuple, list[int]] = {}
        for i in self.sharer_layers:
            reader = receiver.keys[self.reader_layer(i)]
            groups.setdefault((tuple(summary.keys[i].shape), tuple(reader.shape), reader.dtype), []).append(i)
        for layers in groups.values():
            g, spec = len(layers), summary.specs[layers[0]]
            read = [self.read_query[str(i)] for i in layers]
            rk = torch.stack([receiver.keys[self.reader_layer(i)] for i in layers])  # (G, B, Hr, Tr, Dr)
            rv = torch.stack([receiver.values[self.reader_layer(i)] for i in layers])
            rows = torch.cat([rk, rv], dim=-1).transpose(2, 3).flatten(3)  # (G, B, Tr, Hr*2Dr)
            rows = torch.nn.functional.pad(rows, (0, 0, t - rows.shape[2], 0))
            q = stacked.linear(read, rows.flatten(1, 2).to(read[0].weight.dtype)).view(g, b, t, spec.kv_heads, -1)
            slot_k = torch.stack([summary.keys[i] for i in layers]).to(q.dtype)  # (G, B, H, S, D)
            slot_v = torch.stack([summary.values[i] for i in layers]).to(q.dtype)
            present = (slot_k.abs().sum(-1) > 0).any(2)  # (G, B, S)
            scores = torch.einsum("gbthd,gbhsd->gbhts", q, slot_k) / math.sqrt(spec.head_dim)
            a = masked_softmax(scores, present.view(g, b, 1, 1, -1).expand_as(scores), dim=-1)
            out_k = torch.einsum("gbhts,gbhsd->gbhtd", a, slot_k).to(summary.keys[layers[0]].dtype)
            out_v = torch.einsum("gbhts,gbhsd->gbhtd", a, slot_v).to(summary.values[layers[0]].dtype)
            for i, k, v in zip(layers, out_k.unbind(0), out_v.unbind(0)):
                keys[i], values[i] = k, v
        index = torch.arange(t, device=mask.device).expand(b, t)
        return KVView(keys, values, t, list(summary.specs)), index, mask.bool()
