"""Decode a per-token message straight into a preallocated receiver cache: every layer at once, in chunks.

The receiver side of a per-token message (:mod:`lcf.runtime.token_kv`) turns T codes into the K/V of every
layer at the context's positions ``a .. a + T``. :func:`lcf.models.rows.unflat_kv` does it layer by layer and
is what training differentiates through; this module is the inference path::

    keys, values: (L, 1, H, a + T, hd)       preallocated once; layer l's cache is keys[l], values[l] (views)
    for each chunk [s, e) of the codes:      (c = e - s rows, ``chunk`` at most)
        y = decode(codes[s:e])               (c, Dr), Dr = L * 2 * H * hd
        y -> (c, L, 2, H, hd)                one reshape: row layout of lcf.models.rows.flat_kv
        keys[:, 0, :, a+s:a+e]   = rotate(y[:, :, 0]) at positions a+s .. a+e, one rotary table per layer kind
        values[:, 0, :, a+s:a+e] = y[:, :, 1]

So the working memory beyond the cache is one chunk's rows (c x Dr numbers), the rotary angles are computed
once per distinct layer kind (Gemma-3: local and global; most models: one), and no per-layer Python loop runs
on the rows. Models whose layers differ in head count or head size fall back to ``unflat_kv``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from lcf.models.kv import KVView, LayerSpec
from lcf.models.rows import Prepared, Rope, turn, unflat_kv

#: rows decoded at once: 512 rows of SmolLM2-135M (Dr = 11,520) are 23 MB in fp32
DEFAULT_CHUNK = 512


def layer_kinds(model: Any) -> list[int]:
    """For each layer, the index of the first layer that shares its rotary table (same ``layer_types`` entry);
    ``[0] * L`` for models with one kind of layer."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = cfg.num_hidden_layers
    types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * n)[:n]
    first: dict[str, int] = {}
    return [first.setdefault(t, i) for i, t in enumerate(types)]


def rotary_table(rope: Rope, kinds: Sequence[int], positions: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (G, T, hd) for the G distinct layer kinds (``kinds`` from :func:`layer_kinds`)."""
    reps = sorted(set(kinds))
    pairs = [rope(positions, r) for r in reps]
    return torch.stack([c for c, _ in pairs]), torch.stack([s for _, s in pairs])


def uniform(specs: Sequence[LayerSpec]) -> bool:
    """Whether every layer has the same (kv_heads, head_dim), so rows reshape to (L, 2, H, hd) at once."""
    return len({(s.kv_heads, s.head_dim) for s in specs}) == 1


@torch.no_grad()
def decode_into_cache(decode: Callable[[torch.Tensor], torch.Tensor], codes: torch.Tensor, p: Prepared,
                      rope: Rope, kinds: Sequence[int], *, chunk: int = DEFAULT_CHUNK) -> tuple[KVView, int]:
    """The receiver's cache ``[head; decoded codes]`` and where its tail starts (as ``unflat_kv`` returns):
    ``p.view`` holds the template head (positions ``0 .. p.a``), ``codes`` (T, r) one code per context token,
    ``decode`` maps a (c, r) chunk to (c, Dr) rows."""
    specs, t, a = p.view.specs, codes.shape[0], p.a
    if not uniform(specs) or p.view.batch_size != 1:
        return unflat_kv(decode(codes), p, rope)
    n, h, hd = len(specs), specs[0].kv_heads, specs[0].head_dim
    ref = p.view.keys[0]
    keys = torch.empty(n, 1, h, a + t, hd, dtype=ref.dtype, device=ref.device)
    values = torch.empty_like(keys)
    if a:
        keys[:, :, :, :a] = torch.stack([k[:, :, :a] for k in p.view.keys])
        values[:, :, :, :a] = torch.stack([v[:, :, :a] for v in p.view.values])
    cos, sin = rotary_table(rope, kinds, torch.arange(a, a + t, device=ref.device))
    group = torch.tensor([sorted(set(kinds)).index(k) for k in kinds], device=ref.device)
    one_kind = cos.shape[0] == 1
    for s in range(0, t, chunk):
        e = min(s + chunk, t)
        y = decode(codes[s:e]).to(ref.device, ref.dtype).view(e - s, n, 2, h, hd)
        k = y[:, :, 0].permute(1, 2, 0, 3)                       # (L, H, c, hd)
        c_, s_ = (cos[:, s:e], sin[:, s:e]) if one_kind else (cos[group, s:e], sin[group, s:e])
        keys[:, 0, :, a + s:a + e] = turn(k, c_[:, None].to(k.dtype), s_[:, None].to(k.dtype))
        values[:, 0, :, a + s:a + e] = y[:, :, 1].permute(1, 2, 0, 3)
    return KVView(list(keys.unbind(0)), list(values.unbind(0)), a + t, list(specs)), a + t
