"""The LCF low-rank joint KV translator (Latent Cache Flow, arXiv 2605.22863), rewritten for lcf.

Per fused receiver layer, one shared low-rank latent drives both the K and the V edit::

    z        = MLP(Linear_down([sk ; sv ; rk ; rv]))      rank wide; MLP = mlp_blocks x (x + W2 GELU(W1 RMSNorm(x)))
    z_k, z_v = z[:rank/2], z[rank/2:]                     key half and value half
    a_k, a_v = sigmoid(Linear_gate(z)).split(Hr)          per-head scalar gates from the full latent
    dk       = a_k * Linear_up_k(z_k)                     (B, N, Hr*Dr), up-projections zero-initialised
    dv       = a_v * Linear_up_v(z_v)

The paper reports rank 128 ~ 693K parameters per layer for Qwen2.5-0.5B -> Qwen3-0.6B and tries
rank in {64, 128, 256, 512} (256 best, 64 under-fits). With the defaults (two residual MLP blocks of
width 4*rank, halves driving the up-projections) this module has 693,906 parameters per layer at rank 128
and 1,910,034 at rank 256 on that pair: 19.43M / 53.48M for 28 layers, matching the paper's 19.4M and
53.4M (one MLP block would give 562K / 1.38M).

``read_receiver: false`` (not in the paper) drops ``rk, rv`` from the input: ``z = MLP(Linear_down([sk ; sv]))``.
The edit is then a function of the sharer's cache alone, so it cannot adapt the receiver by reading the
receiver's own K/V; whatever it adds has to come through the sharer's cache (as with ``gated_fusion``).
"""
from __future__ import annotations

import torch
from torch import nn

from lcf.errors import RecipeError
from lcf.registry import translators
from lcf.translators import stacked
from lcf.translators.base import FeedForward, PairShapes, Translator, check_dropout, check_int


class LowRankLayer(nn.Module):
    """The joint K/V translator of one receiver layer."""

    def __init__(self, sharer_dim: int, receiver_heads: int, receiver_head_dim: int, rank: int, mlp_ratio: int,
                 mlp_blocks: int, dropout: float, read_receiver: bool = True):
        super().__init__()
        self.heads, self.head_dim, self.half = receiver_heads, receiver_head_dim, rank // 2
        self.read_receiver = read_receiver
        out = receiver_heads * receiver_head_dim
        self.down = nn.Linear(2 * sharer_dim + (2 * out if read_receiver else 0), rank)
        self.mlp = nn.Sequential(*(FeedForward(rank, mlp_ratio * rank, dropout) for _ in range(mlp_blocks)))
        self.gate = nn.Linear(rank, 2 * receiver_heads)
        self.up_k = nn.Linear(self.half, out)
        self.up_v = nn.Linear(self.half, out)
        for lin in (self.up_k, self.up_v):  # a fresh adapter leaves the receiver unchanged
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, sk: torch.Tensor, sv: torch.Tensor, rk: torch.Tensor, rv: torch.Tensor):
        z = self.mlp(self.down(torch.cat([sk, sv, rk, rv] if self.read_receiver else [sk, sv], dim=-1)))
        a = torch.sigmoid(self.gate(z))  # (B, N, 2*Hr)
        a_k, a_v = a[..., : self.heads], a[..., self.heads:]
        b, n, _ = z.shape
        dk = self.up_k(z[..., : self.half]).view(b, n, self.heads, self.head_dim) * a_k.unsqueeze(-1)
        dv = self.up_v(z[..., self.half:]).view(b, n, self.heads, self.head_dim) * a_v.unsqueeze(-1)
        return dk.reshape(b, n, self.heads * self.head_dim), dv.reshape(b, n, self.heads * self.head_dim)


@translators.register("lcf_lowrank")
class LowRankJointKV(Translator):
    """LCF low-rank joint KV translator: sharer and receiver K/V share one ``rank``-wide latent.

    Args:
        shapes: cache layouts and layer map (supplied by the code, not the recipe).
        rank: latent width d (even: half drives K, half drives V). The paper uses 64..512.
        mlp_ratio: hidden width of the latent MLP blocks, as a multiple of ``rank``.
        mlp_blocks: residual pre-norm MLP blocks on the latent (2 reproduces the paper's sizes).
        dropout: dropout inside the latent MLP.
        read_receiver: feed the receiver's own K/V into the latent (the paper's joint input). ``False``:
            the sharer's K/V only, so the edit depends on the receiver's context only through the sharer.
    """

    def __init__(self, shapes: PairShapes, rank: int = 128, mlp_ratio: int = 4, dropout: float = 0.0,
                 mlp_blocks: int = 2, read_receiver: bool = True):
        super().__init__(shapes)
        name = "lcf_lowrank"
        self.rank = check_int(name, "rank", rank, minimum=2)
        if self.rank % 2:
            raise RecipeError(f"{name}: `rank` must be even (half of the latent drives K, half V), got {rank}")
        self.mlp_ratio = check_int(name, "mlp_ratio", mlp_ratio)
        self.mlp_blocks = check_int(name, "mlp_blocks", mlp_blocks, minimum=0)
        self.dropout = check_dropout(name, dropout)
        if not isinstance(read_receiver, bool):
            raise RecipeError(f"{name}: `read_receiver` must be true or false, got {read_receiver!r}")
        self.read_receiver = read_receiver
        for t in self.shapes.fused_layers:
            s_dim, _ = self.shapes.dims(t)
            r = self.shapes.receiver[t]
            self.layers[str(t)] = LowRankLayer(
                s_dim, r.kv_heads, r.head_dim, self.rank, self.mlp_ratio, self.mlp_blocks, self.dropout, read_receiver
            )

    def delta(
        self, layer: int, sk: torch.Tensor, sv: torch.Tensor, rk: torch.Tensor, rv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers[str(layer)](sk, sv, rk, rv)

    def delta_stacked(self, layers, sk, sv, rk, rv):
        mods = [self.layers[str(t)] for t in layers]
        heads, head_dim, half = mods[0].heads, mods[0].head_dim, mods[0].half
        x = torch.cat([sk, sv, rk, rv] if self.read_receiver else [sk, sv], dim=-1)
        z = stacked.linear([m.down for m in mods], x)
        for i in range(self.mlp_blocks):
            z = stacked.feed_forward([m.mlp[i] for m in mods], z)
        a = torch.sigmoid(stacked.linear([m.gate for m in mods], z))  # (G, M, 2*Hr)
        # K and V up-projections as one stack of 2G: [up_k of every layer ; up_v of every layer]
        up = stacked.linear([m.up_k for m in mods] + [m.up_v for m in mods], torch.cat([z[..., :half], z[..., half:]]))
        g, n, _ = z.shape
        gates = torch.cat([a[..., :heads], a[..., heads:]])  # (2G, M, Hr)
        d = (up.view(2 * g, n, heads, head_dim) * gates.unsqueeze(-1)).flatten(2)
        return d[:g], d[g:]
