"""A uniform view of a causal LM's KV cache (transformers 5.x), and the way back into a cache.

Every layer is exposed as keys/values of shape ``(batch, kv_heads, tokens, head_dim)`` exactly as the
model stores them (keys after RoPE). Sliding-window layers (Gemma-3) keep only their most recent
``window - 1`` positions, so a layer may hold fewer tokens than the sequence: ``KVView.start(layer)``
gives the absolute position of a layer's first stored entry.

    view = prefill(model, input_ids[:, :-1])            # no LM-head logits over the prompt
    view = view.replace(layer=3, keys=k3, values=v3)     # edit some layers
    cache = view.to_cache(model)                         # a cache the model continues from
    out = model(input_ids[:, -1:], **cache_kwargs(model, cache), position_ids=...)

transformers renamed the forward/generate argument ``past_key_values`` to ``cache`` (5.2x; the old
name warns and goes away in 5.40): :func:`cache_kwargs` passes the cache under the name the
installed version's forward signature declares.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import torch

from lcf.errors import KVCacheError


@dataclass(frozen=True)
class LayerSpec:
    """Static facts of one attention layer's cache."""

    kv_heads: int
    head_dim: int
    sliding_window: int | None  # None for global attention


def layer_specs(config) -> list[LayerSpec]:
    """Per-layer cache layout of a model config (text part of multimodal configs)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    window = getattr(cfg, "sliding_window", None)
    return [
        LayerSpec(heads, head_dim, window if t in ("sliding_attention", "chunked_attention") else None)
        for t in types[: cfg.num_hidden_layers]
    ]


@dataclass
class KVView:
    """Per-layer K/V tensors plus the number of positions the model has processed."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    seq_len: int
    specs: list[LayerSpec]

    def __post_init__(self):
        if not (len(self.keys) == len(self.values) == len(self.specs)):
            raise KVCacheError(
                f"KVView needs one key, value and spec per layer; got {len(self.keys)} keys, "
                f"{len(self.values)} values and {len(self.specs)} layer specs"
            )
        for i, (k, v, s) in enumerate(zip(self.keys, self.values, self.specs)):
            want = (s.kv_heads, s.head_dim)
            if k.dim() != 4 or k.shape != v.shape or (k.shape[1], k.shape[3]) != want:
                raise KVCacheError(
                    f"layer {i}: keys {tuple(k.shape)} / values {tuple(v.shape)} do not match the "
                    f"expected (batch, {want[0]}, tokens, {want[1]}) for this model"
                )
            if k.shape[2] > self.seq_len:
                raise KVCacheError(f"layer {i} holds {k.shape[2]} positions but seq_len is {self.seq_len}")

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def length(self, layer: int) -> int:
        """How many positions layer ``layer`` stores (less than seq_len for a full sliding window)."""
        return self.keys[layer].shape[2]

    def start(self, layer: int) -> int:
        """Absolute position of the first stored entry of ``layer``."""
        return self.seq_len - self.length(layer)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[i], self.values[i]

    def replace(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> KVView:
        """A new view with one layer's K/V swapped (same shapes required)."""
        if keys.shape != self.keys[layer].shape or values.shape != self.values[layer].shape:
            raise KVCacheError(
                f"layer {layer}: replacement K/V {tuple(keys.shape)}/{tuple(values.shape)} must keep "
                f"the stored shape {tuple(self.keys[layer].shape)}"
            )
        ks, vs = list(self.keys), list(self.values)
        ks[layer], vs[layer] = keys, values
        return replace(self, keys=ks, values=vs)

    def to_cache(self, model_or_config) -> Any:
        """Build a ``DynamicCache`` holding these K/V that ``model`` accepts for further decoding."""
        return build_cache(model_or_config, self)

    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(k.shape) for k in self.keys]


@lru_cache(maxsize=None)
def _cache_arg_name(forward) -> str:
    import inspect

    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model) -> str:
    """The keyword under which ``model``'s forward (and ``generate``) takes a cache: ``"cache"`` on
    transformers versions whose forward declares it, else ``"past_key_values"``."""
    return _cache_arg_name(getattr(type(model), "forward", None) or model.forward)


def cache_kwargs(model, cache) -> dict[str, Any]:
    """``{name: cache}`` with the name the installed transformers expects (see :func:`cache_kwarg`)."""
    return {cache_kwarg(model): cache}


def _config(model_or_config):
    return getattr(model_or_config, "config", model_or_config)


def extract_kv(cache, config, seq_len: int | None = None) -> KVView:
    """Read a transformers cache (``DynamicCache`` with full and sliding layers) into a KVView."""
    specs = layer_specs(_config(config))
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise KVCacheError(
            f"unsupported cache type {type(cache).__name__}: expected a transformers>=5 Cache with "
            f".layers (e.g. DynamicCache). Run the model with use_cache=True and no legacy tuples."
        )
    if len(layers) != len(specs):
        raise KVCacheError(f"cache has {len(layers)} layers, the model config {len(specs)}")
    keys, values = [], []
    for i, layer in enumerate(layers):
        if getattr(layer, "keys", None) is None or not getattr(layer, "is_initialized", True):
            raise KVCacheError(f"cache layer {i} is empty: run a forward pass with use_cache=True first")
        keys.append(layer.keys)
        values.append(layer.values)
    if seq_len is None:
        seq_len = int(cache.get_seq_length())
    return KVView(keys, values, seq_len, specs)


def build_cache(model_or_config, view: KVView):
    """Inverse of :func:`extract_kv`: a fresh ``DynamicCache`` that continues at ``view.seq_len``."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = _config(model_or_config)
    specs = layer_specs(config)
    if [(s.kv_heads, s.head_dim) for s in specs] != [(s.kv_heads, s.head_dim) for s in view.specs]:
        raise KVCacheError("this KVView was made for a model with another cache layout")
    cache = DynamicCache(config=config)
    if len(cache.layers) != view.num_layers:
        raise KVCacheError(f"model cache has {len(cache.layers)} layers, the view {view.num_layers}")
    for i, layer in enumerate(cache.layers):
        k, v = view.keys[i], view.values[i]
        window = specs[i].sliding_window
        if window is None and k.shape[2] != view.seq_len:
            raise KVCacheError(
                f"layer {i} attends globally but holds {k.shape[2]} of {view.seq_len} positions; "
                f"a global layer needs every position"
            )
        if type(layer) is DynamicLayer:
            layer.lazy_initialization(k, v)  # hold the view's tensors: update() would copy them
            layer.keys, layer.values = k, v
        else:
            layer.update(k, v)
        if hasattr(layer, "cumulative_length"):  # sliding layers count positions seen, not stored
            layer.cumulative_length = view.seq_len
    return cache


def decoder(model):
    """The transformer body of a causal LM (everything but the LM head)."""
    body = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if body is None or body is model:
        body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None:
        raise KVCacheError(f"cannot find the decoder body of {type(model).__name__}")
    return body


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: 0.. over real tokens, 0 on padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> KVView:
    """Run the prompt through the model body only (no LM-head logits) and return its KVView."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    body = decoder(model)
    body(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **cache_kwargs(body, cache), **kwargs)
    return extract_kv(cache, model.config, seq_len=input_ids.shape[1])


def continue_logits(model, view: KVView, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Logits for ``input_ids`` placed right after the cached positions of ``view``."""
    t = input_ids.shape[1]
    pos = torch.arange(view.seq_len, view.seq_len + t, device=input_ids.device).expand(input_ids.shape[0], t)
    out = model(
        input_ids=input_ids,
        **cache_kwargs(model, view.to_cache(model)),
        position_ids=pos,
        attention_mask=attention_mask,
        use_cache=True,
    )
    return out.logits


def cat_views(views: Sequence[KVView]) -> KVView:
    """Concatenate views of one model along the batch dimension (same layers and sequence length)."""
    first = views[0]
    return KVView([torch.cat([v.keys[i] for v in views]) for i in range(first.num_layers)],
                  [torch.cat([v.values[i] for v in views]) for i in range(first.num_layers)], first.seq_len,
                  first.specs)
