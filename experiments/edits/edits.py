"""Per-layer edit norms: how much of what an adapter writes into the receiver's cache depends on the sharer.

    python experiments/edits/edits.py ADAPTER --task arc_easy --limit 64 --out edits.json

For every fused receiver layer and prompt position (cloze prompts as ``lcf eval`` scores them), with ``R``
the receiver's own cache and ``F(S)`` the cache fused from sharer cache ``S``::

    edit      = |F(own) - R| / |R|                  how far fusion moves the cache
    specific  = |F(own) - F(another item's)| / |F(own) - R|   the part of the edit that follows the sharer's item
    from_zero = |F(own) - F(all-zero cache)| / |F(own) - R|   the part that needs any sharer content at all

(L2 norms over heads and head dimensions, averaged over the fused positions of all items; keys and values
apart; "another item's" is the evaluation's mismatched control). A translator whose ``specific`` ratios are
near 0 writes the same edit whatever the sharer read: adaptation (a learned prefix), not transfer.

An analysis, not the library (moved out of ``lcf.eval``); its report: docs/results/science-mc-contrast.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lcf.errors import LCFError
from lcf.eval.controls import zero_sharer_cache
from lcf.eval.systems import AdapterSystem
from lcf.models.kv import KVView
from lcf.training.contrast import mismatched_batch


def _position_norms(a: torch.Tensor, b: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Per fused position (selected by ``mask`` (B, T)), the L2 norm of ``a - b`` (or of ``a``) over heads and dims."""
    diff = a if b is None else a - b
    return diff.float().pow(2).sum(dim=(1, 3)).sqrt()[mask]  # (B, H, T, D) -> (B, T) -> (n,)


@torch.no_grad()
def edit_norms(adapter: Any, contexts: Sequence[str], *, batch_size: int = 8) -> dict[str, Any]:
    """Mean per-layer norms over the fused positions of ``contexts`` (see the module docstring)."""
    if len(set(contexts)) < 2:
        raise LCFError("edit norms compare each item with another item's sharer cache: give at least 2 "
                       "distinct prompts")
    system = AdapterSystem(adapter)
    comm = adapter.communicator
    sums: dict[tuple[int, str, str], float] = {}
    positions = 0
    for start in range(0, len(contexts), batch_size):
        chunk = list(contexts[start:start + batch_size])
        if len(chunk) < 2:  # the last item alone: pair it with the one before
            chunk = list(contexts[start - 1:start + 1])
        batch = system._batch(system._encode_raw(chunk))
        base = comm.fused_prompt_cache(batch, fuse=False)
        views: dict[str, KVView] = {
            "own": comm.fused_prompt_cache(batch),
            "other": comm.fused_prompt_cache(mismatched_batch(batch)),
            "zero": comm.fused_prompt_cache(batch, sharer_transform=zero_sharer_cache),
        }
        mask = batch["align_mask"][:, :-1].bool() & batch["receiver_prompt_mask"][:, :-1].bool()
        positions += int(mask.sum())
        for layer in range(base.num_layers):
            for kind in ("keys", "values"):
                r = getattr(base, kind)[layer]
                own = getattr(views["own"], kind)[layer]
                terms = {"receiver": _position_norms(r, None, mask), "edit": _position_norms(own, r, mask),
                         "specific": _position_norms(own, getattr(views["other"], kind)[layer], mask),
                         "from_zero": _position_norms(own, getattr(views["zero"], kind)[layer], mask)}
                for name, value in terms.items():
                    sums[(layer, kind, name)] = sums.get((layer, kind, name), 0.0) + float(value.sum())
    layers = []
    for layer in range(base.num_layers):
        row: dict[str, Any] = {"layer": layer}
        for kind in ("keys", "values"):
            mean = {name: sums[(layer, kind, name)] / max(positions, 1)
                    for name in ("receiver", "edit", "specific", "from_zero")}
            edit = mean["edit"]
            row[kind] = {"receiver_norm": mean["receiver"], "edit_norm": edit,
                         "edit": edit / max(mean["receiver"], 1e-12),
                         "specific": mean["specific"] / edit if edit > 0 else 0.0,
                         "from_zero": mean["from_zero"] / edit if edit > 0 else 0.0}
        layers.append(row)
    return {"items": len(contexts), "positions": positions, "gates": system.gate_values(), "layers": layers}


def format_table(result: dict[str, Any]) -> str:
    gates = {int(k): v for k, v in result["gates"].items()}
    lines = [f"{result['items']} items, {result['positions']} fused positions; ratios of mean L2 norms "
             "(edit: |F(own) - R| / |R|; specific: |F(own) - F(other)| / |F(own) - R|; from_zero: |F(own) - F(zero)| / "
             "|F(own) - R|)",
             "| layer | gate K / V | edit K / V | specific K / V | from_zero K / V |", "|---:|---|---|---|---|"]
    for row in result["layers"]:
        k, v = row["keys"], row["values"]
        gate = gates.get(row["layer"])
        g = f"{gate[0]:.2f} / {gate[1]:.2f}" if gate else "-"
        lines.append(f"| {row['layer']} | {g} | {k['edit']:.3f} / {v['edit']:.3f} | {k['specific']:.3f} / "
                     f"{v['specific']:.3f} | {k['from_zero']:.3f} / {v['from_zero']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python experiments/edits/edits.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("adapter", help="an exported adapter folder (token-aligned: no compressor)")
    ap.add_argument("--task", default="arc_easy", help="a registered multiple-choice task (its cloze prompts)")
    ap.add_argument("--split", default=None, help="the task's split (default: its evaluation split)")
    ap.add_argument("--limit", type=int, default=64, help="items: the first N of the split, in file order")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data-root", default=None, help="data folder (default: LCF_DATA_ROOT or ../shared/data)")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    from lcf.eval.tasks import load_task
    from lcf.runtime import load_adapter

    task = load_task(args.task, data_root=args.data_root, split=args.split)
    items = task.all_items()[:args.limit]
    adapter = load_adapter(args.adapter)
    if adapter.config.get("compressor"):
        raise LCFError(f"{args.adapter} is a cross-context adapter; edit norms compare token-aligned sharer caches")
    result = edit_norms(adapter, [task.cloze_prompt(it) for it in items], batch_size=args.batch_size)
    result |= {"adapter": str(args.adapter), "task": args.task}
    print(format_table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
