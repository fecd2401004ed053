"""The per-token map as a registered translator component (type ``token_map``).

    code = ((x - x_mean) / x_std) @ down        x: (T, Ds) sharer rows   -> code: (T, r)
    y    = code @ up + y_mean                   code: (T, r)             -> y: (T, Dr) receiver rows

A row holds one token's keys (rotary phase undone) and values of every layer, heads flattened:
``Ds = sum over sharer layers of 2 * kv_heads * head_dim`` (Dr likewise for the receiver). For Gemma-3-270M ->
SmolLM2-135M-Instruct, Ds = 9,216 and Dr = 11,520; rank 512 holds 10.6 M parameters (42 MB in fp32) and sends
2,048 bytes a context token in fp32, 516 in int8, 260 in int4. ``down`` and ``up`` start at zero and are set
by the recipe's ``init:`` section (a ridge fit cut to rank r, or an earlier run / adapter) before training.
``standardize: false`` keeps ``x_std`` at 1: the ridge initialisation is then fitted on centred, unscaled rows.
"""
from __future__ import annotations

from typing import Any

import torch

from lcf.components import recorded_args, recording_init
from lcf.errors import RecipeError
from lcf.registry import translators
from lcf.runtime.token_kv import LowRank


def row_width(specs: Any) -> int:
    """Numbers in one row of a model's cache (every layer's K and V, heads flattened)."""
    return sum(2 * s.kv_heads * s.head_dim for s in specs)


@translators.register("token_map")
class TokenMap(LowRank):
    """Rank-``rank`` map from the sharer's per-token rows to the receiver's (see the module docstring)."""

    #: how ``lcf train`` trains it, ``lcf export`` writes it and ``load_adapter`` loads it (lcf.runtime.kinds)
    adapter_kind = "per_token"

    def __init__(self, shapes: Any, rank: int = 512, standardize: bool = True):
        ds, dr = row_width(shapes.sharer), row_width(shapes.receiver)
        if not 0 < rank <= min(ds, dr):
            raise RecipeError(f"translator.rank: must be in 1..{min(ds, dr)} (the row widths are {ds} and {dr}), "
                              f"got {rank}")
        super().__init__(torch.zeros(ds, rank), torch.zeros(rank, dr), torch.zeros(ds), torch.ones(ds),
                         torch.zeros(dr))
        self.shapes, self.standardize = shapes, standardize

    @property
    def init_args(self) -> dict[str, Any]:
        return recorded_args(self)

    @property
    def active_layers(self) -> list[int]:
        """The receiver layers it writes: all of them (the context's rows of every layer)."""
        return list(range(len(self.shapes.receiver)))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_from(self, other: LowRank) -> None:
        """Take ``other``'s weights and standardisation (the init stage); shapes must agree."""
        mine = self.state_dict()
        theirs = other.state_dict()
        wrong = {k: (tuple(theirs[k].shape), tuple(v.shape)) for k, v in mine.items()
                 if k not in theirs or theirs[k].shape != v.shape}
        if wrong:
            raise RecipeError(f"init: the initial map's tensors do not fit translator {self.init_args} "
                              f"(name: (given, expected) shapes {wrong}); use the same rank and model pair")
        with torch.no_grad():
            for k, v in mine.items():
                v.copy_(theirs[k])

    def gate_values(self) -> dict[int, tuple[float, float]]:
        return {}  # no per-layer gates: every layer of the context is replaced


TokenMap.__init__ = recording_init(TokenMap.__init__)  # type: ignore[method-assign]
