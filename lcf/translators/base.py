"""What every translator shares: pair shapes, the per-layer gates and the gated residual fusion.

A translator edits a receiver KV cache with a sharer KV cache, token by token::

    R'[t] = R[t] + g[t] * delta_t(S[s], R[t])          for every fused receiver layer t <- sharer layer s

``g`` is the per-layer gate (:class:`LayerGates`: Gumbel-sigmoid in training, hard 0/1 in eval) and
``delta`` the method-specific edit, already weighted per token / per head by the method itself.
Subclasses only build one module per fused receiver layer in ``self.layers`` (an ``nn.ModuleDict``
keyed by ``str(receiver_layer)``) and implement :meth:`Translator.delta` on flattened heads.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lcf.align.layers import LayerMap
from lcf.components import recorded_args, recording_init
from lcf.errors import KVCacheError, LCFError, RecipeError
from lcf.models.kv import KVView, LayerSpec, layer_specs
from lcf.translators.stacked import fuse_stacked

#: Reserved keyword accepted by every translator constructor: the receiver layers kept by :meth:`prune`.
ACTIVE_LAYERS_ARG = "active_layers"


# -- shapes ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairShapes:
    """Cache layout of both models plus the layer map: everything a translator's sizes depend on."""

    sharer: tuple[LayerSpec, ...]
    receiver: tuple[LayerSpec, ...]
    layer_map: LayerMap

    def __post_init__(self):
        object.__setattr__(self, "sharer", tuple(self.sharer))
        object.__setattr__(self, "receiver", tuple(self.receiver))
        if len(self.sharer) != self.layer_map.sharer_layers:
            raise RecipeError(
                f"PairShapes: the sharer has {len(self.sharer)} layers but the layer map was built for "
                f"{self.layer_map.sharer_layers}; build the layer map from the same model configs"
            )
        if len(self.receiver) != self.layer_map.receiver_layers:
            raise RecipeError(
                f"PairShapes: the receiver has {len(self.receiver)} layers but the layer map has "
                f"{self.layer_map.receiver_layers} entries; build the layer map from the same model configs"
            )

    @classmethod
    def from_configs(cls, sharer_config: Any, receiver_config: Any, layer_map: LayerMap) -> PairShapes:
        """Shapes from two transformers configs (no weights needed)."""
        return cls(tuple(layer_specs(sharer_config)), tuple(layer_specs(receiver_config)), layer_map)

    # -- serialisation (adapter_config.json) --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; :meth:`from_dict` is its inverse."""
        return {
            "sharer": [dataclasses.asdict(s) for s in self.sharer],
            "receiver": [dataclasses.asdict(s) for s in self.receiver],
            "layer_map": {"sharer_of": self.layer_map.to_list(), "sharer_layers": self.layer_map.sharer_layers},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairShapes:
        try:
            lm = data["layer_map"]
            return cls(
                tuple(LayerSpec(**s) for s in data["sharer"]),
                tuple(LayerSpec(**s) for s in data["receiver"]),
                LayerMap(tuple(lm["sharer_of"]), int(lm["sharer_layers"])),
            )
        except (KeyError, TypeError) as exc:
            raise RecipeError(
                f"PairShapes.from_dict: malformed shapes ({type(exc).__name__}: {exc}); expected keys "
                f"'sharer', 'receiver' (lists of {{kv_heads, head_dim, sliding_window}}) and "
                f"'layer_map' ({{sharer_of, sharer_layers}}) as written by PairShapes.to_dict()"
            ) from exc

    # -- lookups ------------------------------------------------------------------------------
    @property
    def fused_layers(self) -> tuple[int, ...]:
        """Receiver layers that read a sharer layer."""
        return tuple(self.layer_map.fused)

    def sharer_layer(self, receiver_layer: int) -> int:
        s = self.layer_map.sharer_of[receiver_layer]
        if s is None:
            raise LCFError(f"receiver layer {receiver_layer} is not fused (the layer map gives it no sharer layer)")
        return s

    def specs(self, receiver_layer: int) -> tuple[LayerSpec, LayerSpec]:
        """(sharer spec, receiver spec) of a fused receiver layer."""
        return self.sharer[self.sharer_layer(receiver_layer)], self.receiver[receiver_layer]

    def dims(self, receiver_layer: int) -> tuple[int, int]:
        """(sharer heads*head_dim, receiver heads*head_dim) of a fused receiver layer: flattened widths."""
        s, r = self.specs(receiver_layer)
        return s.kv_heads * s.head_dim, r.kv_heads * r.head_dim


# -- gates -----------------------------------------------------------------------------------------
def annealed_temperature(step: int, total_steps: int, start: float = 1.0, end: float = 0.001) -> float:
    """Exponential annealing ``start * (end / start) ** min(step / total_steps, 1)``."""
    if start <= 0 or end <= 0:
        raise ValueError(f"gate temperatures must be positive, got start={start}, end={end}")
    if total_steps <= 0:
        return float(end)
    return float(start * (end / start) ** min(max(step, 0) / total_steps, 1.0))


class LayerGates(nn.Module):
    """Two gate logits (K, V) per fused receiver layer — the one gate mechanism of every translator.

    Training: Gumbel-sigmoid ``sigmoid((logit + log u - log(1 - u)) / temperature)``, u ~ U(0, 1).
    Eval: hard ``(logit > 0)``. Logits start at ``init`` (+1: open).
    """

    def __init__(self, layers: Iterable[int], init: float = 1.0):
        super().__init__()
        self.logits = nn.ParameterDict({str(t): nn.Parameter(torch.full((2,), float(init))) for t in layers})
        # schedule state, set every step by the trainer: not part of exported adapters
        self.register_buffer("temperature", torch.tensor(1.0), persistent=False)

    @property
    def layers(self) -> list[int]:
        return sorted(int(k) for k in self.logits.keys())

    def set_temperature(self, t: float) -> None:
        if not t > 0:
            raise ValueError(f"gate temperature must be positive, got {t}")
        self.temperature.fill_(float(t))

    def forward(
        self, layer: int | Sequence[int], dk: torch.Tensor | None = None, dv: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(g_k, g_v), the scalar gates of receiver layer ``layer`` (a fresh Gumbel sample in training);
        given the edits ``dk``, ``dv``: the gated edits ``(g_k * dk, g_v * dv)``.

        ``layer`` may be a list of G layers (stacked path): (G,) gates, ``(G, ...)`` edits gated row by row,
        one uniform draw in the per-layer calls' order (both paths sample the same gates from one state).

        Training must use the second form: the product happens inside this module, so ZeRO-3's
        backward hooks see tensor inputs that need gradients and keep the logits gathered until their
        gradients exist (with no such input, they release the logits too early)."""
        if isinstance(layer, int):
            logit = self.logits[str(layer)]
        else:
            logit = torch.stack([self.logits[str(t)] for t in layer])  # (G, 2): draws in per-layer order
        if self.training:
            eps = torch.finfo(logit.dtype).eps
            u = torch.rand_like(logit).clamp(eps, 1 - eps)
            g = torch.sigmoid((logit + torch.log(u) - torch.log1p(-u)) / self.temperature.to(logit.dtype))
        else:
            g = (logit > 0).to(logit.dtype)
        if not isinstance(layer, int):
            g = g.t()  # (2, G)
        if dk is None or dv is None:
            return g[0], g[1]
        if not isinstance(layer, int):  # (G,) gates against (G, ...) edits
            return (g[0].to(dk.dtype).view(-1, *(1,) * (dk.dim() - 1)) * dk,
                    g[1].to(dv.dtype).view(-1, *(1,) * (dv.dim() - 1)) * dv)
        return g[0].to(dk.dtype) * dk, g[1].to(dv.dtype) * dv

    @torch.no_grad()
    def values(self) -> dict[int, tuple[float, float]]:
        """layer -> (sigmoid(logit_k), sigmoid(logit_v)), for logging."""
        return {t: tuple(torch.sigmoid(self.logits[str(t)]).tolist()) for t in self.layers}

    @torch.no_grad()
    def hard(self) -> dict[int, tuple[bool, bool]]:
        """layer -> (K gate open, V gate open) as used at inference."""
        return {t: tuple(bool(x) for x in (self.logits[str(t)] > 0).tolist()) for t in self.layers}

    def drop(self, layer: int) -> None:
        del self.logits[str(layer)]


# -- the translator base ---------------------------------------------------------------------------
def _flatten_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) -> (B, N, H*D)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _unflatten_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*D) -> (B, H, N, D)."""
    b, n, hd = x.shape
    return x.view(b, n, heads, hd // heads).transpose(1, 2)


class Translator(nn.Module):
    """Base class: gated residual fusion of a sharer KVView into a receiver KVView.

    Subclasses fill ``self.layers[str(t)]`` for every ``t`` in ``shapes.fused_layers`` and implement
    :meth:`delta`. Constructor arguments (except ``shapes``) are recorded as :attr:`init_args`, so
    ``type(tr)(shapes=tr.shapes, **tr.init_args)`` rebuilds the same architecture.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = recording_init(cls.__dict__["__init__"], extra_kwarg=ACTIVE_LAYERS_ARG,
                                          after=lambda self, active: self._after_init(active))

    def __init__(self, shapes: PairShapes):
        super().__init__()
        if isinstance(shapes, Mapping):
            shapes = PairShapes.from_dict(shapes)
        if not isinstance(shapes, PairShapes):
            raise RecipeError(f"{type(self).__name__}: `shapes` must be a PairShapes, got {type(shapes).__name__}")
        if not shapes.fused_layers:
            raise RecipeError(f"{type(self).__name__}: the layer map fuses no receiver layer; nothing to translate")
        self.shapes = shapes
        self.gates = LayerGates(shapes.fused_layers)
        self.layers = nn.ModuleDict()
        self._active: set[int] = set(shapes.fused_layers)
        #: fuse all layers in stacked batches (False: the per-layer reference path); not exported
        self.stacked = True

    def _check_built(self) -> None:
        missing = [t for t in self._active if str(t) not in self.layers]
        if missing:
            raise LCFError(
                f"{type(self).__name__}.__init__ built no module for fused receiver layers {sorted(missing)}; "
                f"add one per layer to self.layers[str(layer)]"
            )

    # -- to implement ------------------------------------------------------------------------
    def delta(
        self, layer: int, sk: torch.Tensor, sv: torch.Tensor, rk: torch.Tensor, rv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted edits (dk, dv) of shape (B, N, Hr*Dr) for receiver layer ``layer``.

        sk/sv: aligned sharer rows (B, N, Hs*Ds); rk/rv: receiver rows (B, N, Hr*Dr)."""
        raise NotImplementedError(f"{type(self).__name__} must implement delta()")

    def delta_stacked(
        self, layers: Sequence[int], sk: torch.Tensor, sv: torch.Tensor, rk: torch.Tensor, rv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`delta` of G layers at once: inputs ``(G, M, .)``, row g of ``layers[g]``; edits ``(G, M, Hr*Dr)``.
        Optional: a translator without it always runs the per-layer path."""
        raise NotImplementedError(f"{type(self).__name__} has no stacked path; use fuse_per_layer()")

    # -- bookkeeping -------------------------------------------------------------------------
    def _after_init(self, active: Sequence[int] | None) -> None:
        """Once the outermost ``__init__`` returns: every fused layer has a module; ``active_layers``
        (the reserved keyword of pruned adapters) prunes the others."""
        self._check_built()
        if active is not None:
            self.prune(keep=list(active))

    @property
    def init_args(self) -> dict[str, Any]:
        """Constructor arguments except ``shapes`` (JSON-safe), plus ``active_layers`` once pruned."""
        args = recorded_args(self)
        if self._active != set(self.shapes.fused_layers):
            args[ACTIVE_LAYERS_ARG] = self.active_layers
        return args

    @property
    def active_layers(self) -> list[int]:
        """Fused receiver layers this translator still edits (all fused layers until :meth:`prune`)."""
        return sorted(self._active)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def size_bytes(self) -> int:
        """Bytes of the exported tensors (the state dict)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def gate_values(self) -> dict[int, tuple[float, float]]:
        """receiver layer -> (sigmoid K gate logit, sigmoid V gate logit)."""
        return self.gates.values()

    def prune(self, keep: Sequence[int] | None = None) -> list[int]:
        """Drop the modules and gates of layers whose hard gates are both closed (``keep=None``) or
        that are not in ``keep``. Returns the receiver layers kept; :meth:`fuse` skips the others."""
        if keep is None:
            kept = {t for t, (k, v) in self.gates.hard().items() if (k or v) and t in self._active}
        else:
            unknown = sorted(set(keep) - set(self.shapes.fused_layers))
            if unknown:
                raise LCFError(f"prune: layers {unknown} are not fused receiver layers {list(self.shapes.fused_layers)}")
            kept = set(keep) & self._active
        for t in sorted(self._active - kept):
            del self.layers[str(t)]
            self.gates.drop(t)
        self._active = kept
        return sorted(kept)

    def extra_repr(self) -> str:
        return f"active_layers={self.active_layers}"

    # -- fusion ------------------------------------------------------------------------------
    def _check_views(self, sharer: KVView, receiver: KVView, align_index: torch.Tensor, align_mask: torch.Tensor):
        for role, view, specs in (("sharer", sharer, self.shapes.sharer), ("receiver", receiver, self.shapes.receiver)):
            got = [(s.kv_heads, s.head_dim) for s in view.specs]
            want = [(s.kv_heads, s.head_dim) for s in specs]
            if got != want:
                raise KVCacheError(
                    f"{type(self).__name__}.fuse: the {role} cache has layout {got[:3]}... ({len(got)} layers) but "
                    f"the translator was built for {want[:3]}... ({len(want)} layers); wrong model or direction?"
                )
        b, t = receiver.batch_size, receiver.seq_len
        if sharer.batch_size != b:
            raise KVCacheError(f"fuse: sharer batch {sharer.batch_size} != receiver batch {b}")
        if tuple(align_index.shape) != (b, t) or tuple(align_mask.shape) != (b, t):
            raise KVCacheError(
                f"fuse: align_index {tuple(align_index.shape)} and align_mask {tuple(align_mask.shape)} must both "
                f"be (batch, receiver seq_len) = ({b}, {t})"
            )

    def fuse(self, sharer: KVView, receiver: KVView, align_index: torch.Tensor, align_mask: torch.Tensor) -> KVView:
        """A new receiver KVView with ``R + g * delta`` at every aligned position of every active layer.

        ``align_index[b, p]`` is the sharer position aligned with receiver position ``p``; positions with
        ``align_mask`` False, or whose sharer position the sharer layer no longer stores (sliding
        window), keep the receiver value. Layers not edited are passed through as the same tensors.

        Stacked path (:mod:`lcf.translators.stacked`) when :attr:`stacked` and :meth:`delta_stacked` exists,
        else :meth:`fuse_per_layer`, the reference."""
        if self.stacked and type(self).delta_stacked is not Translator.delta_stacked:
            self._check_views(sharer, receiver, align_index, align_mask)
            return fuse_stacked(self, sharer, receiver, align_index, align_mask)
        return self.fuse_per_layer(sharer, receiver, align_index, align_mask)

    def fuse_per_layer(self, sharer: KVView, receiver: KVView, align_index: torch.Tensor,
                       align_mask: torch.Tensor) -> KVView:
        """:meth:`fuse` one layer at a time: the reference the stacked path is tested against."""
        self._check_views(sharer, receiver, align_index, align_mask)
        align_mask = align_mask.bool()
        keys, values = list(receiver.keys), list(receiver.values)
        for t in self.active_layers:
            open_k = open_v = True
            if not self.training:
                g_k, g_v = self.gates(t)
                open_k, open_v = bool(g_k.item()), bool(g_v.item())
                if not (open_k or open_v):
                    continue  # both gates closed: nothing to compute
            s = self.shapes.sharer_layer(t)
            rk, rv = receiver.layer(t)
            sk, sv = sharer.layer(s)
            r0, s0, s_len = receiver.start(t), sharer.start(s), sharer.length(s)
            idx = align_index[:, r0:]
            valid = align_mask[:, r0:] & (idx >= s0) & (idx < s0 + s_len)
            if not self.training and not bool(valid.any()):
                continue  # (never skipped in training: DDP expects every parameter to get a gradient)
            # Only valid positions are translated: they are packed into one (1, M, .) row, so padding,
            # template tokens and positions the sharer no longer holds cost nothing.
            bi, pi = valid.nonzero(as_tuple=True)
            si = idx[bi, pi] - s0
            dtype = next(self.layers[str(t)].parameters(), rk).dtype
            flat_rk, flat_rv = _flatten_heads(rk), _flatten_heads(rv)
            dk, dv = self.delta(
                t,
                _flatten_heads(sk)[bi, si].to(dtype).unsqueeze(0),
                _flatten_heads(sv)[bi, si].to(dtype).unsqueeze(0),
                flat_rk[bi, pi].to(dtype).unsqueeze(0),
                flat_rv[bi, pi].to(dtype).unsqueeze(0),
            )
            heads = rk.shape[1]
            dk, dv = self.gates(t, dk[0], dv[0])
            if open_k:
                edit = torch.zeros_like(flat_rk).index_put((bi, pi), dk.to(rk.dtype))
                keys[t] = rk + _unflatten_heads(edit, heads)
            if open_v:
                edit = torch.zeros_like(flat_rv).index_put((bi, pi), dv.to(rv.dtype))
                values[t] = rv + _unflatten_heads(edit, heads)
        return dataclasses.replace(receiver, keys=keys, values=values)


# -- small helpers shared by the built-in translators ------------------------------------------------
def check_int(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RecipeError(f"{owner}: `{name}` must be an integer >= {minimum}, got {value!r}")
    return value


def check_dropout(owner: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0 or math.isnan(value):
        raise RecipeError(f"{owner}: `dropout` must be a probability in [0, 1), got {value!r}")
    return float(value)


class FeedForward(nn.Module):
    """Pre-RMSNorm feed-forward block with residual: ``x + W2 act(W1 norm(x))``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.down(self.act(self.up(self.norm(x)))))
