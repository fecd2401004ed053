"""The stacked fusion path: every fused layer of a translator computed in one batch of operators.

The per-layer path (:meth:`Translator.fuse_per_layer`) runs, for each fused receiver layer, its
own gathers, its own small matmuls, its own gates and its own scatters: a few thousand operator
calls per training step (forward and backward), each too small to keep a CPU or a GPU busy. This
path groups the fused layers whose shapes agree (heads, head dims, stored lengths and starts of
both caches: sliding-window layers of a long prompt form their own group), stacks their K/V along
a leading layer dimension, gathers and scatters once per group, and runs the method's edit as
batched matmuls on per-layer weights stacked at call time (:func:`linear`, :func:`feed_forward`).

Parameters stay per layer (``layers.<t>.…``): exported adapters, :meth:`Translator.prune` and the
gate API are the same on both paths, and gradients reach the same tensors.
"""
from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lcf.models.kv import KVView


# -- stacked weights ----------------------------------------------------------------------------------
#: inference copies of stacked weights: id(first parameter) -> {ids of all: (weak refs, versions, stacked)};
#: an entry goes when its first parameter is freed
_STACKS: dict[int, dict] = {}


def stack(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(params)``. Without autograd (inference), the stacked copy is kept and reused while no
    parameter changes (same tensors, same in-place versions), so a forward does not copy every weight again;
    a stack made with autograd drops the kept copy (training frees the memory)."""
    first, key = params[0], tuple(id(p) for p in params)
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        _STACKS.get(id(first), {}).pop(key, None)
        return torch.stack(list(params))
    versions = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)  # .to() swaps .data
    kept = _STACKS.get(id(first))
    if kept is None:
        kept = _STACKS[id(first)] = {}
        weakref.finalize(first, _STACKS.pop, id(first), None)
    hit = kept.get(key)
    if hit is not None and hit[1] == versions and all(r() is p for r, p in zip(hit[0], params)):
        return hit[2]
    out = torch.stack(list(params))
    kept[key] = (tuple(weakref.ref(p) for p in params), versions, out)
    return out


# -- batched building blocks ----------------------------------------------------------------------------
def linear(mods: Sequence[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """``mods[g](x[g])`` for every g at once: x ``(G, M, in)`` -> ``(G, M, out)``."""
    weight = stack([m.weight for m in mods])  # (G, out, in)
    if mods[0].bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(stack([m.bias for m in mods]).unsqueeze(1), x, weight.transpose(1, 2))


def rms_norm(mods: Sequence[nn.RMSNorm], x: torch.Tensor) -> torch.Tensor:
    """Stacked ``nn.RMSNorm`` (one weight per group member)."""
    y = F.rms_norm(x, mods[0].normalized_shape, None, mods[0].eps)
    if mods[0].weight is None:
        return y
    return y * stack([m.weight for m in mods]).unsqueeze(1)


def feed_forward(blocks: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Stacked :class:`lcf.translators.base.FeedForward`: ``x + W2 act(W1 norm(x))`` per group member."""
    h = linear([b.up for b in blocks], rms_norm([b.norm for b in blocks], x))
    h = blocks[0].act(h)
    if blocks[0].drop.p > 0:  # one mask for the whole stack (the per-layer path draws one per layer)
        h = blocks[0].drop(h)
    return x + linear([b.down for b in blocks], h)


def gather_rows(x: torch.Tensor, bi: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """(G, B, H, N, D) at positions (bi[m], pi[m]) -> (G, M, H*D), heads flattened as the per-layer path does."""
    rows = x[:, bi, :, pi]  # advanced indices split by a slice come first: (M, G, H, D)
    return rows.transpose(0, 1).flatten(2)


# -- the fusion -------------------------------------------------------------------------------------
def _groups(tr, sharer: KVView, receiver: KVView, layers: Sequence[int]) -> list[list[int]]:
    """Fused layers grouped by everything their stacked tensors' shapes depend on."""
    groups: dict[tuple, list[int]] = {}
    for t in layers:
        s = tr.shapes.sharer_layer(t)
        key = (tuple(sharer.keys[s].shape), sharer.start(s), tuple(receiver.keys[t].shape), receiver.start(t),
               sharer.keys[s].dtype, receiver.keys[t].dtype, next(tr.layers[str(t)].parameters()).dtype)
        groups.setdefault(key, []).append(t)
    return list(groups.values())


def fuse_stacked(tr, sharer: KVView, receiver: KVView, align_index: torch.Tensor, align_mask: torch.Tensor) -> KVView:
    """Same result as :meth:`Translator.fuse_per_layer` (views already checked), layers batched."""
    align_mask = align_mask.bool()
    keys, values = list(receiver.keys), list(receiver.values)
    layers = tr.active_layers
    open_gates = {t: (True, True) for t in layers}
    if not tr.training and layers:
        with torch.no_grad():  # one host read for all layers' hard gates
            hard = (torch.stack([tr.gates.logits[str(t)] for t in layers]) > 0).tolist()
        open_gates = {t: tuple(h) for t, h in zip(layers, hard)}
        layers = [t for t in layers if any(open_gates[t])]
    for group in _groups(tr, sharer, receiver, layers):
        t0, s0_layer = group[0], tr.shapes.sharer_layer(group[0])
        r0, s0, s_len = receiver.start(t0), sharer.start(s0_layer), sharer.length(s0_layer)
        idx = align_index[:, r0:]
        valid = align_mask[:, r0:] & (idx >= s0) & (idx < s0 + s_len)
        if not tr.training and not bool(valid.any()):
            continue
        bi, pi = valid.nonzero(as_tuple=True)
        si = idx[bi, pi] - s0
        dtype = next(tr.layers[str(t0)].parameters()).dtype
        s_layers = [tr.shapes.sharer_layer(t) for t in group]
        sk = torch.stack([sharer.keys[s] for s in s_layers])
        sv = torch.stack([sharer.values[s] for s in s_layers])
        rk = torch.stack([receiver.keys[t] for t in group])  # (G, B, Hr, N, Dr)
        rv = torch.stack([receiver.values[t] for t in group])
        dk, dv = tr.delta_stacked(
            group, gather_rows(sk, bi, si).to(dtype), gather_rows(sv, bi, si).to(dtype),
            gather_rows(rk, bi, pi).to(dtype), gather_rows(rv, bi, pi).to(dtype),
        )
        dk, dv = tr.gates(group, dk, dv)
        g, heads = len(group), rk.shape[2]
        gi = torch.arange(g, device=bi.device).unsqueeze(1)
        # R + edit at the valid positions, in R's layout: (G, B, N, H, D) views, accumulate into a copy
        new_k = rk.transpose(2, 3).index_put((gi, bi, pi), dk.to(rk.dtype).unflatten(-1, (heads, -1)),
                                             accumulate=True).transpose(2, 3)
        new_v = rv.transpose(2, 3).index_put((gi, bi, pi), dv.to(rv.dtype).unflatten(-1, (heads, -1)),
                                             accumulate=True).transpose(2, 3)
        for t, k, v in zip(group, new_k.unbind(0), new_v.unbind(0)):
            open_k, open_v = open_gates[t]
            if open_k:
                keys[t] = k
            if open_v:
                values[t] = v
    return dataclasses.replace(receiver, keys=keys, values=values)
