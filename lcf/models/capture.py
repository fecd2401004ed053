"""Every position's K/V of a long prompt, on sliding-window layers too (for cross-context compressors).

A sliding-window layer (Gemma-3: window 512) stores only its most recent ``window - 1`` positions, so
a plain prefill of a 2,000-token context leaves most of the context's keys and values out of reach
of a compressor. :func:`prefill_all_positions` prefills the prompt in chunks of at most ``window - 1``
tokens on one cache and copies each chunk's K/V out of every layer right after the chunk ran, before
the next chunk evicts it. Each position's K/V are exactly those of a one-pass prefill (the model
attends the same positions either way); only the storage differs::

    view = prefill_all_positions(sharer, ids, mask, position_ids)   # every layer holds ids.shape[1] positions
"""
from __future__ import annotations

import torch

from lcf.errors import KVCacheError
from lcf.models.kv import KVView, cache_kwargs, decoder, layer_specs

__all__ = ["capture_chunk", "prefill_all_positions"]


def capture_chunk(config) -> int | None:
    """Longest chunk whose K/V every layer still stores after the chunk ran: ``min(window) - 1`` over
    the sliding-window layers, None when no layer slides (one pass keeps everything)."""
    windows = [s.sliding_window for s in layer_specs(config) if s.sliding_window]
    return min(windows) - 1 if windows else None


@torch.no_grad()
def prefill_all_positions(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          position_ids: torch.Tensor | None = None, chunk: int | None = None) -> KVView:
    """A KVView of ``input_ids`` whose every layer holds all ``input_ids.shape[1]`` positions.

    chunk: tokens per forward pass (default and maximum: :func:`capture_chunk` of the model)."""
    from transformers import DynamicCache

    limit = capture_chunk(model.config)
    chunk = chunk or limit
    if limit is not None and (chunk is None or chunk > limit or chunk < 1):
        raise KVCacheError(f"prefill_all_positions: chunk={chunk} must be between 1 and {limit} (the shortest "
                           f"sliding window - 1), or a chunk's first positions are evicted before they are copied")
    b, n = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = torch.arange(n, device=input_ids.device).expand(b, n)
    chunk = chunk or max(n, 1)
    specs = layer_specs(model.config)
    cache = DynamicCache(config=model.config)
    body = decoder(model)
    keys: list[list[torch.Tensor]] = [[] for _ in specs]
    values: list[list[torch.Tensor]] = [[] for _ in specs]
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        body(input_ids=input_ids[:, start:end], attention_mask=attention_mask[:, :end],
             position_ids=position_ids[:, start:end], use_cache=True, **cache_kwargs(body, cache))
        new = end - start
        for i, layer in enumerate(cache.layers):
            if layer.keys.shape[2] < new:
                raise KVCacheError(f"layer {i} stores {layer.keys.shape[2]} positions after a {new}-token chunk; "
                                   f"use a smaller chunk")
            keys[i].append(layer.keys[:, :, -new:])
            values[i].append(layer.values[:, :, -new:])
    return KVView([torch.cat(k, dim=2) for k in keys], [torch.cat(v, dim=2) for v in values], n, specs)
