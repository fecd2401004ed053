"""``span_pool``: LCF-X's two-stage attention pooling of a context cache (arXiv 2605.22863, Sec. LCF-X).

Per summarised sharer layer and KV head, two learned queries (``D`` numbers each):

1. the *span query* attends within each span of the context: span ``p`` gets
   ``K_p = sum_i a_i K_i`` and ``V_p = sum_i a_i V_i`` with ``a = softmax_i(q_span . K_i / sqrt(D))``
   over the positions ``i`` of span ``p``;
2. the *summary query* attends over the span summaries the same way and gives one ``(K, V)`` per
   layer per head: the summary the translator broadcasts to every receiver position.

Queries start at zero, i.e. as mean pooling. Nothing depends on the number of spans or on how they
were cut, so a compressor trained on paragraphs runs on sentences or fixed token blocks too.
``summary_heads`` > 1 learns several summary queries per head (``summary_len`` positions).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lcf.compressors.base import Compressor
from lcf.data.spans import SPAN_SCHEMES
from lcf.errors import RecipeError
from lcf.registry import compressors
from lcf.translators.base import PairShapes


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
    """

    def __init__(self, shapes: PairShapes, spans: str = "paragraph", span_tokens: int = 32, max_spans: int = 64):
        super().__init__(shapes)
        if spans not in SPAN_SCHEMES:
            raise RecipeError(f"span_pool: spans must be one of {', '.join(SPAN_SCHEMES)}, got {spans!r}")
        for name, value in (("span_tokens", span_tokens), ("max_spans", max_spans)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(f"span_pool: `{name}` must be an integer >= 1, got {value!r}")
        self.spans, self.span_tokens, self.max_spans = spans, span_tokens, max_spans
        self.span_query = nn.ParameterDict()
        self.summary_query = nn.ParameterDict()
        for s in self.sharer_layers:
            spec = shapes.sharer[s]
            self.span_query[str(s)] = nn.Parameter(torch.zeros(spec.kv_heads, spec.head_dim))
            self.summary_query[str(s)] = nn.Parameter(torch.zeros(spec.kv_heads, spec.head_dim))

    def summarise_layer(self, layer, keys, values, span_ids):
        b, h, n, d = keys.shape
        dtype = self.span_query[str(layer)].dtype
        k, v = keys.to(dtype), values.to(dtype)
        span_ids = span_ids.clamp(max=self.max_spans - 1)
        p = int(span_ids.max().item()) + 1 if n and span_ids.numel() else 0
        if p <= 0:  # nothing of the context is stored: an all-zero summary
            zero = k.new_zeros(b, h, 1, d)
            return zero, zero
        member = span_ids.unsqueeze(1) == torch.arange(p, device=span_ids.device).view(1, p, 1)  # (B, P, N)
        scale = 1.0 / math.sqrt(d)
        scores = torch.einsum("bhnd,hd->bhn", k, self.span_query[str(layer)]) * scale  # (B, H, N)
        a = masked_softmax(scores.unsqueeze(2).expand(b, h, p, n), member.unsqueeze(1), dim=-1)  # (B, H, P, N)
        span_k = torch.einsum("bhpn,bhnd->bhpd", a, k)
        span_v = torch.einsum("bhpn,bhnd->bhpd", a, v)
        present = member.any(-1)  # (B, P): spans with at least one stored position
        scores2 = torch.einsum("bhpd,hd->bhp", span_k, self.summary_query[str(layer)]) * scale
        a2 = masked_softmax(scores2, present.unsqueeze(1).expand(b, h, p), dim=-1)  # (B, H, P)
        out_k = torch.einsum("bhp,bhpd->bhd", a2, span_k).unsqueeze(2)
        out_v = torch.einsum("bhp,bhpd->bhd", a2, span_v).unsqueeze(2)
        return out_k.to(keys.dtype), out_v.to(values.dtype)
