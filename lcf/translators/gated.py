"""Gated fusion: the lightest translator — a linear map of the sharer cache with per-head gates.

Per fused receiver layer::

    dk = sigmoid(a_k) * W_k sk          W_k: (Hs*Ds -> Hr*Dr), zero-initialised; a_k: one logit per head
    dv = sigmoid(a_v) * W_v sv

It does not look at the receiver cache and has no MLP; the per-head logits start at 0 (gate 0.5).
"""
from __future__ import annotations

import torch
from torch import nn

from lcf.errors import RecipeError
from lcf.registry import translators
from lcf.translators import stacked
from lcf.translators.base import PairShapes, Translator


class GatedLayer(nn.Module):
    """Linear K and V maps plus per-head gate logits of one receiver layer."""

    def __init__(self, sharer_dim: int, receiver_heads: int, receiver_head_dim: int, bias: bool):
        super().__init__()
        self.heads, self.head_dim = receiver_heads, receiver_head_dim
        out = receiver_heads * receiver_head_dim
        self.key = nn.Linear(sharer_dim, out, bias=bias)
        self.value = nn.Linear(sharer_dim, out, bias=bias)
        for lin in (self.key, self.value):  # a fresh adapter leaves the receiver unchanged
            nn.init.zeros_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        self.head_logits = nn.Parameter(torch.zeros(2, receiver_heads))  # sigmoid(0) = 0.5

    def _gated(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return (x.view(b, n, self.heads, self.head_dim) * torch.sigmoid(logits).unsqueeze(-1)).reshape(b, n, self.heads * self.head_dim)

    def forward(self, sk: torch.Tensor, sv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gated(self.key(sk), self.head_logits[0]), self._gated(self.value(sv), self.head_logits[1])


@translators.register("gated_fusion")
class GatedFusion(Translator):
    """Linear sharer -> receiver K/V maps fused by learned per-head gates (no MLP, receiver-blind).

    Args:
        shapes: cache layouts and layer map (supplied by the code, not the recipe).
        bias: give the linear maps a bias.
    """

    def __init__(self, shapes: PairShapes, bias: bool = True):
        super().__init__(shapes)
        if not isinstance(bias, bool):
            raise RecipeError(f"gated_fusion: `bias` must be true or false, got {bias!r}")
        self.bias = bias
        for t in self.shapes.fused_layers:
            s_dim, _ = self.shapes.dims(t)
            r = self.shapes.receiver[t]
            self.layers[str(t)] = GatedLayer(s_dim, r.kv_heads, r.head_dim, bias)

    def delta(
        self, layer: int, sk: torch.Tensor, sv: torch.Tensor, rk: torch.Tensor, rv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers[str(layer)](sk, sv)

    def delta_stacked(self, layers, sk, sv, rk, rv):
        mods = [self.layers[str(t)] for t in layers]
        # K and V maps of every layer as one stack of 2G: [key maps ; value maps]
        out = stacked.linear([m.key for m in mods] + [m.value for m in mods], torch.cat([sk, sv]))
        logits = stacked.stack([m.head_logits for m in mods])  # (G, 2, Hr)
        gates = torch.sigmoid(torch.cat([logits[:, 0], logits[:, 1]]))  # (2G, Hr)
        g2, n, _ = out.shape
        d = (out.view(g2, n, mods[0].heads, mods[0].head_dim) * gates[:, None, :, None]).flatten(2)
        return d[: g2 // 2], d[g2 // 2:]
