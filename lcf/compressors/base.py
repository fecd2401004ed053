"""What every compressor shares: a sharer cache over a context in, a short summary cache out.

A compressor turns the sharer's KV cache of a context it read, split into spans, into a *summary*:
a :class:`~lcf.models.kv.KVView` with ``summary_len`` positions per sharer layer (one for LCF-X,
arXiv 2605.22863). The translator then reads the summary in place of the token-aligned sharer
cache: every receiver position reads summary position 0 (see :meth:`lcf.communicator.Communicator`).

Only the sharer layers the layer map reads are summarised; the other layers of the returned view
hold no positions. The communicator hands the compressor every position's K/V, on sliding-window
layers too (:func:`lcf.models.capture.prefill_all_positions`), so contexts up to
:data:`CONTEXT_LIMIT` tokens are summarised whole. Subclasses implement :meth:`Compressor.summarise_layer`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lcf.components import recorded_args, recording_init
from lcf.errors import KVCacheError, RecipeError
from lcf.models.kv import KVView
from lcf.translators.base import PairShapes

#: longest sharer prompt a compressor summarises (chunked capture keeps every position); longer
#: contexts are refused (and counted by the evaluation), not truncated. 8,192 holds every HotpotQA
#: distractor context (at most 2,118 Gemma-3 tokens in the shared sample) and every MuSiQue one (5,182-7,170)
CONTEXT_LIMIT = 8192


class Compressor(nn.Module):
    """Base class. Constructor arguments except ``shapes`` are recorded as :attr:`init_args` (they
    go into ``adapter_config.json``), so ``type(c)(shapes=c.shapes, **c.init_args)`` rebuilds it."""

    #: positions per layer in the summary
    summary_len: int = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = recording_init(cls.__dict__["__init__"])

    def __init__(self, shapes: PairShapes):
        super().__init__()
        if isinstance(shapes, dict):
            shapes = PairShapes.from_dict(shapes)
        if not isinstance(shapes, PairShapes):
            raise RecipeError(f"{type(self).__name__}: `shapes` must be a PairShapes, got {type(shapes).__name__}")
        self.shapes = shapes
        #: sharer layers the layer map reads: the only ones summarised
        self.sharer_layers: list[int] = sorted({s for s in shapes.layer_map.sharer_of if s is not None})
        #: summarise all layers in stacked batches (False: layer by layer, the reference); not exported
        self.stacked = True

    @property
    def init_args(self) -> dict[str, Any]:
        return recorded_args(self)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def context_limit(self, sharer_config: Any = None) -> int:
        """Longest sharer prompt summarised whole: :data:`CONTEXT_LIMIT`, or the sharer's
        ``max_position_embeddings`` when its config is given and that is smaller. Sliding-window layers
        do not limit it: the sharer is prefilled in chunks and every chunk's K/V captured."""
        limits = [CONTEXT_LIMIT]
        cfg = sharer_config.get_text_config() if hasattr(sharer_config, "get_text_config") else sharer_config
        if getattr(cfg, "max_position_embeddings", None):
            limits.append(int(cfg.max_position_embeddings))
        return min(limits) if limits else 1 << 30

    # -- to implement ------------------------------------------------------------------------------
    def summarise_layer(self, layer: int, keys: torch.Tensor, values: torch.Tensor,
                        span_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summary K/V ``(B, H, summary_len, D)`` of one sharer layer.

        keys/values: ``(B, H, L, D)`` the positions the layer stores; span_ids: ``(B, L)`` the span of
        each of those positions (``-1``: not part of the context — template, padding)."""
        raise NotImplementedError(f"{type(self).__name__} must implement summarise_layer()")

    def summarise_layers(self, layers: list[int], keys: torch.Tensor, values: torch.Tensor,
                         span_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`summarise_layer` of G layers at once (the stacked path): keys/values ``(G, B, H, L, D)``
        of layers that store the same positions; returns ``(G, B, H, summary_len, D)``. Optional: a
        compressor without it always summarises layer by layer."""
        raise NotImplementedError(f"{type(self).__name__} has no stacked path")

    def read(self, summary: KVView, receiver: KVView, mask: torch.Tensor) -> tuple[KVView, torch.Tensor, torch.Tensor]:
        """``(view, align_index, align_mask)`` the translator reads at the receiver prompt positions:
        by default every real position (``mask``, ``(B, T)``) reads summary position 0."""
        return summary, torch.zeros_like(mask, dtype=torch.long), mask.bool()

    # -- the whole cache -----------------------------------------------------------------------------
    def forward(self, view: KVView, span_ids: torch.Tensor) -> KVView:
        """The summary of every read sharer layer; ``span_ids`` is ``(B, view.seq_len)``."""
        want = [(s.kv_heads, s.head_dim) for s in self.shapes.sharer]
        if [(s.kv_heads, s.head_dim) for s in view.specs] != want:
            raise KVCacheError(f"{type(self).__name__}: the sharer cache has another layout than the one the "
                               f"compressor was built for ({len(want)} layers of {want[0]}); wrong model?")
        if tuple(span_ids.shape) != (view.batch_size, view.seq_len):
            raise KVCacheError(f"{type(self).__name__}: span_ids {tuple(span_ids.shape)} must be (batch, sharer "
                               f"tokens) = ({view.batch_size}, {view.seq_len})")
        if self.stacked and type(self).summarise_layers is not Compressor.summarise_layers:
            keys = [k[:, :, :0] for k in view.keys]
            values = [v[:, :, :0] for v in view.values]
            groups: dict[tuple, list[int]] = {}  # layers whose stacked K/V have one shape and one start
            for i in self.sharer_layers:
                groups.setdefault((tuple(view.keys[i].shape), view.start(i), view.keys[i].dtype), []).append(i)
            for layers in groups.values():
                sk, sv = self.summarise_layers(layers, torch.stack([view.keys[i] for i in layers]),
                                               torch.stack([view.values[i] for i in layers]),
                                               span_ids[:, view.start(layers[0]):])
                for i, k, v in zip(layers, sk.unbind(0), sv.unbind(0)):
                    keys[i], values[i] = k, v
            return KVView(keys, values, self.summary_len, list(view.specs))
        keys, values = [], []
        for i, (k, v) in enumerate(zip(view.keys, view.values)):
            if i in self.sharer_layers:
                sk, sv = self.summarise_layer(i, k, v, span_ids[:, view.start(i):])
            else:
                sk, sv = k[:, :, :0], v[:, :, :0]
            keys.append(sk)
            values.append(sv)
        return KVView(keys, values, self.summary_len, list(view.specs))
