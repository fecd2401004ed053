"""The ridge K/V translation of :mod:`lcf.eval.kv_translate`, cut to rank r and fine-tuned end to end.

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
from lcf.eval import kv_translate as kt
from lcf.eval.kv_translate import Pair, Ridge, unflat_kv
from lcf.models.kv import KVView, cache_kwargs
from lcf.models.rows import Prepared, WindowError
from lcf.runtime.token_kv import LowRank


def answer_ids(tokenizer: Any, answer: str) -> torch.Tensor:
    """The answer's tokens followed by the tokenizer's end-of-turn (EOS) token."""
    if tokenizer.eos_token_id is None:
        raise LCFError("the receiver's tokenizer has no eos_token_id, so the answer's end cannot be trained")
    return torch.tensor(tokenizer(answer.strip(), add_special_tokens=False).input_ids + [tokenizer.eos_token_id])


def head_only(p: Prepared) -> Prepared:
    """``p`` keeping only the receiver's cache before the context (all :func:`unflat_kv` reads): a copy, so the
    context's part of the prefill is freed."""
    keys = [k[:, :, :p.a].clone() for k in p.view.keys]
    values = [v[:, :, :p.a].clone() for v in p.view.values]
    return Prepared(KVView(keys, values, p.a, p.view.specs), p.a, p.b, p.tail)


def finetune(pair: Pair, translator: LowRank, items: Sequence[Any], *, steps: int, batch_size: int = 8,
             lr: float = 1e-4, mse_weight: float = 1.0, grad_clip: float = 1.0, seed: int = 0,
             log_every: int = 10, features_dtype: torch.dtype | None = None) -> list[dict[str, float]]:
    """Train ``translator`` in place on ``items`` (cross-context examples with answers); returns the log.

    The rows of every item are computed once and kept in memory (about 83 KB a context token for
    Gemma-3-270M -> SmolLM2-135M in fp32); ``features_dtype=torch.float16`` halves that.
    """
    model, tok = pair.receiver, pair.receiver_tokenizer
    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    t0 = time.time()
    keep = (lambda t: t.to(features_dtype)) if features_dtype is not None else (lambda t: t)
    data, skipped = [], 0
    for it in (it for it in items if it.answers):
        try:
            x, y, p = pair.features(it)
        except WindowError:  # a context longer than a sliding window: its rows do not exist
            skipped += 1
            continue
        data.append((keep(x), keep(y), head_only(p), answer_ids(tok, it.answers[0]).to(y.device)))
    if skipped:
        print(f"finetune: skipped {skipped} items whose prompts exceed a sliding window", file=sys.stderr)
    if not data:
        raise LCFError("finetune needs training items with answers (whose prompts fit the models' windows)")
    dtype = translator.y_mean.dtype
    var = sum(((d[1].to(dtype) - translator.y_mean) ** 2).sum(0) for d in data) / sum(len(d[1]) for d in data)
    var = var.clamp(min=1e-6)
    opt = torch.optim.Adam(translator.parameters(), lr=lr)
    rng, log = random.Random(seed), []
    try:
        for step in range(steps):
            opt.zero_grad()
            ce_sum = mse_sum = 0.0
            for i in rng.sample(range(len(data)), min(batch_size, len(data))):
                x, y, p, ans = data[i]
                x, y = x.to(dtype), y.to(dtype)
                rows = translator(x)
                view, start = unflat_kv(rows, p, pair.receiver_rope)
                ids = torch.cat([p.tail, ans])[None]
                cache = view.to_cache(model)
                pos = torch.arange(start, start + ids.shape[1], device=ids.device)[None]
                out = model(input_ids=ids, position_ids=pos,
                            attention_mask=torch.ones(1, start + ids.shape[1], dtype=torch.long, device=ids.device),
                            use_cache=True, **cache_kwargs(model, cache))
                ce = torch.nn.functional.cross_entropy(out.logits[0, len(p.tail) - 1:-1].float(), ans)
                mse = (((rows - y) ** 2) / var).mean()
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
        low = LowRank.from_ridge(ridge, args.rank, seed=args.seed)
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
