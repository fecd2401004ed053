"""Compressors: a sharer's cache over a context it read -> a compact summary for the translator.

Built-in (registered in :data:`lcf.registry.compressors` when this package is imported):

    span_pool   LCF-X two-stage learned-query pooling (arXiv 2605.22863)   :class:`SpanPool`

Write your own by subclassing :class:`Compressor` and implementing ``summarise_layer``.
"""
from lcf.compressors.base import Compressor
from lcf.compressors.span_pool import SPAN_SCHEMES, SpanPool

__all__ = ["Compressor", "SpanPool", "SPAN_SCHEMES"]
