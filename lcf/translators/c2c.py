"""The C2C fuser (Cache-to-Cache, arXiv 2510.03215), rewritten for lcf: the baseline translator.

Per fused receiver layer, K and V each get their own (identical) stack::

    h      = FFN(Linear_in([sharer_flat ; receiver_flat]))          hidden_dim wide, pre-RMSNorm FFN
    proj   = Linear_proj(FFN_a(h))                                    (B, N, Hr*Dr), zero-initialised
    weight = sigmoid(Linear_w(FFN_b(h)))                              (B, N, Hr), one per token and head
    delta  = weight * proj                                            (weight broadcast over head_dim)

Every FFN block is ``x + W2 GELU(W1 RMSNorm(x))`` with ``hidden_dim -> hidden_dim`` layers, which gives
the ~17M parameters per layer that the paper reports for Qwen2.5-0.5B -> Qwen3-0.6B.
"""
from __future__ import annotations

import torch
from torch import nn

from lcf.registry import translators
from lcf.translators import stacked
from lcf.translators.base import FeedForward, PairShapes, Translator, check_dropout, check_int


class C2CStack(nn.Module):
    """One K (or V) stack of a C2C layer fuser."""

    def __init__(self, in_dim: int, heads: int, head_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.inp = nn.Linear(in_dim, hidden_dim)
        self.trunk = FeedForward(hidden_dim, hidden_dim, dropout)
        self.proj_block = FeedForward(hidden_dim, hidden_dim, dropout)
        self.proj = nn.Linear(hidden_dim, heads * head_dim)
        self.weight_block = FeedForward(hidden_dim, hidden_dim, dropout)
        self.weight = nn.Linear(hidden_dim, heads)
        nn.init.zeros_(self.proj.weight)  # a fresh adapter leaves the receiver unchanged
        nn.init.zeros_(self.proj.bias)

    def forward(self, sharer: torch.Tensor, receiver: torch.Tensor) -> torch.Tensor:
        h = self.trunk(self.inp(torch.cat([sharer, receiver], dim=-1)))
        proj = self.proj(self.proj_block(h))
        weight = torch.sigmoid(self.weight(self.weight_block(h)))
        b, n, _ = proj.shape
        return (proj.view(b, n, self.heads, self.head_dim) * weight.unsqueeze(-1)).reshape(b, n, self.heads * self.head_dim)


class C2CLayer(nn.Module):
    """The fuser of one receiver layer: separate K and V stacks."""

    def __init__(self, sharer_dim: int, receiver_heads: int, receiver_head_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        in_dim = sharer_dim + receiver_heads * receiver_head_dim
        self.key = C2CStack(in_dim, receiver_heads, receiver_head_dim, hidden_dim, dropout)
        self.value = C2CStack(in_dim, receiver_heads, receiver_head_dim, hidden_dim, dropout)


@translators.register("c2c_projector")
class C2CProjector(Translator):
    """C2C baseline: per-layer MLP projector of concatenated sharer and receiver K/V, with per-token,
    per-head weights and the shared per-layer gates.

    Args:
        shapes: cache layouts and layer map (supplied by the code, not the recipe).
        hidden_dim: width of every stack (1024 in the paper).
        dropout: dropout inside the feed-forward blocks.
    """

    def __init__(self, shapes: PairShapes, hidden_dim: int = 1024, dropout: float = 0.0):
        super().__init__(shapes)
        name = "c2c_projector"
        self.hidden_dim = check_int(name, "hidden_dim", hidden_dim)
        self.dropout = check_dropout(name, dropout)
        for t in self.shapes.fused_layers:
            s_dim, _ = self.shapes.dims(t)
            r = self.shapes.receiver[t]
            self.layers[str(t)] = C2CLayer(s_dim, r.kv_heads, r.head_dim, self.hidden_dim, self.dropout)

    def delta(
        self, layer: int, sk: torch.Tensor, sv: torch.Tensor, rk: torch.Tensor, rv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fuser = self.layers[str(layer)]
        return fuser.key(sk, rk), fuser.value(sv, rv)

    def delta_stacked(self, layers, sk, sv, rk, rv):
        # the K and V stacks of every layer as one stack of 2G: [key stacks ; value stacks]
        st = [self.layers[str(t)].key for t in layers] + [self.layers[str(t)].value for t in layers]
        x = torch.cat([torch.cat([sk, rk], dim=-1), torch.cat([sv, rv], dim=-1)])
        h = stacked.feed_forward([m.trunk for m in st], stacked.linear([m.inp for m in st], x))
        proj = stacked.linear([m.proj for m in st], stacked.feed_forward([m.proj_block for m in st], h))
        weight = torch.sigmoid(stacked.linear([m.weight for m in st], stacked.feed_forward([m.weight_block for m in st], h)))
        g2, n, _ = proj.shape
        d = (proj.view(g2, n, st[0].heads, st[0].head_dim) * weight.unsqueeze(-1)).flatten(2)
        return d[: g2 // 2], d[g2 // 2:]
