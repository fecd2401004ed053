"""Adapter size (parameters, MB) of the three translators on the real demo pair.

    python benchmarks/adapter_size.py [--pair gemma3-to-smollm2]

Only the model configs are read (no weights are loaded): shapes come from the prepared checkpoints.
"""
from __future__ import annotations

import argparse

from lcf import cards
from lcf.models.loading import locate
from lcf.registry import layer_maps, translators
from lcf.translators.base import PairShapes

SYSTEMS = [
    ("c2c_projector", {"hidden_dim": 1024}),
    ("lcf_lowrank", {"rank": 64}),
    ("lcf_lowrank", {"rank": 128}),
    ("lcf_lowrank", {"rank": 256}),
    ("gated_fusion", {}),
]


def load_config(name: str):
    from transformers import AutoConfig

    _, where, _ = locate(name)
    return AutoConfig.from_pretrained(where)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", default="gemma3-to-smollm2")
    args = ap.parse_args()
    pair = cards.pair_card(args.pair)
    s_cfg, r_cfg = load_config(pair.sharer), load_config(pair.receiver)
    lmap = layer_maps.build(pair.layer_map, "layer_map")(s_cfg.num_hidden_layers, r_cfg.num_hidden_layers)
    shapes = PairShapes.from_configs(s_cfg, r_cfg, lmap)
    print(f"pair {args.pair}: sharer {pair.sharer} -> receiver {pair.receiver}, {len(lmap.fused)} fused layers (fp32)")
    print(f"{'translator':<30}{'parameters':>14}{'per layer':>12}{'MB':>10}{'vs C2C':>9}")
    c2c = None
    for kind, kw in SYSTEMS:
        tr = translators.build({"type": kind, **kw}, "translator", shapes=shapes)
        n = tr.num_parameters()
        c2c = c2c or n
        label = kind + "".join(f" {k}={v}" for k, v in kw.items())
        print(f"{label:<30}{n:>14,}{n // len(lmap.fused):>12,}{tr.size_bytes() / 1e6:>10.2f}{c2c / n:>8.1f}x")


if __name__ == "__main__":
    main()
