"""The ridge K/V translation of ``kv_translate.py``, cut to rank r and fine-tuned end to end by a hand-written loop
(the research path; ``lcf train`` with translator ``token_map`` is the library's, with checkpoints and resume).

    y = ((x - x_mean) / x_std) @ down @ up + y_mean        x: (T, Ds) sharer rows, y: (T, Dr) receiver rows

``down`` (Ds, r) and ``up`` (r, Dr) start as the ridge map's leading singular pairs; then the receiver
(frozen) reads the translated cache of a training context, and the loss is its cross-entropy on the
answer (the answer's tokens and the end-of-turn token) plus ``mse_weight`` times the mean squared error
to the receiver's own cache of the context, each column divided by its variance. For Gemma-3-270M ->
SmolLM2-135M-Instruct, r = 512 holds 10.6 M parameters (42 MB in fp32); the full ridge map holds 106 M.
"""
from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lcf.errors import LCFError
import kv_translate as kt
from kv_translate import Pair, Ridge
from lcf.runtime.token_kv import LowRank


def finetune(pair: Pair, translator: LowRank, items: Sequence[Any], *, steps: int, batch_size: int = 8,
             lr: float = 1e-4, mse_weight: float = 1.0, grad_clip: float = 1.0, seed: int = 0,
             log_every: int = 10, features_dtype: torch.dtype | None = None) -> list[dict[str, float]]:
    """Train ``translator`` in place on ``items`` (cross-context examples with answers); returns the log.

    The rows of every item are computed once and kept in memory (about 83 KB a context token for
    Gemma-3-270M -> SmolLM2-135M in fp32); ``features_dtype=torch.float16`` halves that.
    """
    from lcf.token_map.data import item_rows
    from lcf.token_map.losses import AnswerCE, RowsMSE
    from lcf.token_map.module import TokenMapModule
    from lcf.training.settings import TrainerSettings

    model = pair.receiver
    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    t0 = time.time()
    data, skipped = item_rows(pair, list(items), features_dtype or torch.float32, "finetune")
    if skipped:
        print(f"finetune: skipped {skipped} items whose prompts exceed a sliding window", file=sys.stderr)
    if not data:
        raise LCFError("finetune needs training items with answers (whose prompts fit the models' windows)")
    # the library's loss (lcf.token_map.module), on this script's own sampling and optimiser
    losses = TokenMapModule(translator, model, pair.receiver_rope, TrainerSettings(),
                            [AnswerCE(), RowsMSE(weight=mse_weight)])
    dtype = translator.y_mean.dtype
    var = sum(((d["y"].to(dtype) - translator.y_mean) ** 2).sum(0) for d in data) / sum(len(d["y"]) for d in data)
    losses.set_variance(var.clamp(min=1e-6))
    opt = torch.optim.Adam(translator.parameters(), lr=lr)
    rng, log = random.Random(seed), []
    try:
        for step in range(steps):
            opt.zero_grad()
            ce_sum = mse_sum = 0.0
            for i in rng.sample(range(len(data)), min(batch_size, len(data))):
                ce, mse = losses.item_losses(data[i])
                ((ce + mse_weight * mse) / batch_size).backward()
                ce_sum, mse_sum = ce_sum + ce.item(), mse_sum + mse.item()
            torch.nn.utils.clip_grad_norm_(list(translator.parameters()), grad_clip)
            opt.step()
            n = min(batch_size, len(data))
            log.append({"step": step, "ce": ce_sum / n, "mse": mse_sum / n, "seconds": time.time() - t0,
                        "items": len(data), "skipped": skipped})
            if log_every and step % log_every == 0:
                print(f"step {step}: ce {ce_sum / n:.3f}, mse {mse_sum / n:.3f}, {time.time() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    finally:
        for p, flag in zip(model.parameters(), frozen):
            p.requires_grad_(flag)
    return log


def training_items(specs: Sequence[Sequence[str]], per_set: Sequence[int], data_root: str | None, seed: int
                   ) -> tuple[list[Any], list[dict[str, Any]]]:
    """Up to ``per_set[i]`` items (with answers) from the training split of data set i, shuffled together.

    Returns the items and each set's spec with the number of items it gave.
    """
    if not specs:
        raise LCFError("--finetune-steps needs --train KEY=VALUE ... (cross-context data with answers)")
    counts = kt.counts_per_set(per_set, len(specs), "train")
    items: list[Any] = []
    used: list[dict[str, Any]] = []
    for spec, limit in zip(specs, counts):
        train, _, info = kt._dataset(spec, data_root)
        train = [it for it in train if it.answers]
        random.Random(seed).shuffle(train)
        items += train[:limit]
        used.append({k: v for k, v in info.items() if k != "data_root"} | {"items": len(train[:limit])})
    random.Random(seed + 1).shuffle(items)
    return items, used


def tuned_from_args(args: Any, pair: Pair, ridge: Ridge, report: dict[str, Any]) -> tuple[LowRank, dict[str, Any]]:
    """The fine-tuned rank-r translation: loaded from --tuned if it exists, else trained (and saved there)."""
    if args.tuned and Path(args.tuned).exists():
        low, saved = LowRank.load(args.tuned)
        if saved.get("ridge") != report:
            raise LCFError(f"{args.tuned} was tuned from another ridge map than {args.translator}; "
                           "pass another --tuned")
        return low, saved
    train, used = training_items(args.train, args.train_items, args.data_root, args.seed)
    before: dict[str, Any] | None = None
    if args.init:  # a second stage: go on from a tuned map of the same ridge map
        low, before = LowRank.load(args.init)
        if before.get("ridge") != report:
            raise LCFError(f"--init {args.init} was tuned from another ridge map than {args.translator}; start "
                           "from a map tuned from this one, or drop --init")
    else:
        low = ridge.cut(args.rank, seed=args.seed)
    log = finetune(pair, low, train, steps=args.finetune_steps, lr=args.lr, mse_weight=args.mse_weight,
                   seed=args.seed, features_dtype=getattr(torch, args.features_dtype))
    tail = log[-10:]
    report = {"ridge": report, "sharer": report["sharer"], "receiver": report["receiver"], "rank": low.rank,
              "finetune": {"train": used[0] if len(used) == 1 else used, "train_items": log[-1]["items"],
                           "skipped_too_long": log[-1]["skipped"],
                           "steps": args.finetune_steps, "lr": args.lr, "mse_weight": args.mse_weight,
                           "features_dtype": args.features_dtype, "seconds": round(log[-1]["seconds"]),
                           "ce_last10": sum(r["ce"] for r in tail) / len(tail),
                           "mse_last10": sum(r["mse"] for r in tail) / len(tail)}}
    if before is not None:
        report["finetune"]["after"] = before.get("finetune")
    if args.tuned:
        low.save(args.tuned, report)
    return low, report
