"""Research driver of the per-token map (an experiment, not the library: the method itself is the registered
translator ``token_map`` of :mod:`lcf.token_map`, trained by ``lcf train recipes/xc_token.yaml``).

Per-token K/V translation: how much of a context the receiver reads when its own cache of the context
is replaced by a linear translation of the *sharer's* cache of the same context. No summary, no fusion.

    python experiments/kv_translate/kv_translate.py smollm2-135m-instruct gemma3-270m --out DIR --items 60 \\
        --data type=fact_transfer values=open phrasing=varied num_paragraphs=1 \\
        --fit type=fact_transfer values=open num_train=1200 seed=1 --fit type=squad_xc --fit-items 1500

``experiments/cache_ceiling`` showed that the receiver cannot read pooled slots even of its own cache, but
reads a rank-128 projection of every position well. This asks the next question: can the sharer's
cache stand in for the receiver's, token by token? For each receiver token of the context (aligned to
the sharer's tokens by maximal string coverage), the sharer's keys and values of all layers, with the
rotary phase undone, are mapped by one ridge regression onto the receiver's keys and values of all
layers (phase undone too); the prediction is rotated at the receiver's positions and placed where the
receiver's own cache of the context was. The question then runs on top of it, as in ``cache_ceiling``:

* ``alone``: the receiver without the context (with only the text it holds itself, if any);
* ``text``: the receiver's own cache (must equal ``receiver + full context``);
* ``translated``: the sharer's cache of the context, translated;
* ``mismatched``: the translated cache of the next item's context (control);
* ``zero``: all-zero keys and values at the context's positions (control);
* ``mean``: the translator's mean output at every position (control: a cache with no item in it).

Contexts longer than a sharer's sliding window are read whole (prefilled in chunks, every position's K/V
kept: ``lcf.models.capture``); ``--batch-size`` bounds the rows in memory for long ones. ``--exclude`` leaves
out the items earlier reports scored, to confirm a result on items not yet looked at.

The map is fitted in closed form on the training split of ``--fit`` data sets (Gram matrices summed
over tokens, an eigendecomposition, ridge strength chosen on held-out contexts by R^2). Outputs are
scored as ``lcf eval-xc`` scores them and written in its layout (``python -m lcf.eval.paired`` pairs them).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from lcf.errors import LCFError
from lcf.models.rows import (WindowError, context_span, flat_kv, greedy, layer_rope, stop_ids,  # noqa: F401
                             unflat_kv)
from lcf.runtime.token_kv import TokenMessage, dequantize_rows, quantize_rows
from lcf.token_map.ridge import Ridge as _Ridge
from lcf.token_map.rows import TokenRows

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cache_ceiling"))  # the sibling experiment
from cache_ceiling import format_table  # noqa: E402  (its table of context-cache methods)

METHODS = ("alone", "text", "translated", "mismatched", "zero", "mean")
QUANTIZED = ("translated-int8", "translated-int4")  # rank-r maps: the codes sent as int8 / int4 messages


Pair = TokenRows  # the name this script's commands and tests used


class Ridge(_Ridge):
    """The component's ridge map, with the full map saved to and loaded from a file (``--translator``)."""

    def save(self, path: str | Path, report: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        tensors = {"w": self.w, "x_mean": self.x_mean, "x_std": self.x_std, "y_mean": self.y_mean}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"report": json.dumps(report)})

    @classmethod
    def load(cls, path: str | Path) -> tuple[Ridge, dict[str, Any]]:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}
            report = json.loads((f.metadata() or {}).get("report", "{}"))
        return cls(t["w"], t["x_mean"], t["x_std"], t["y_mean"]), report


@torch.no_grad()
def run(pair: Pair, translator: Any, items: Sequence[Any], methods: Sequence[str] = METHODS, *,
        max_new_tokens: int = 16, batch_size: int = 8) -> dict[str, Any]:
    """Scores and predictions per method, in the layout of ``lcf eval-xc``'s results. ``translator``: a
    :class:`Ridge` or ``lcf.eval.kv_tune.LowRank`` (callable on sharer rows, with ``y_mean``). Items are read
    ``batch_size`` at a time (two batches' rows in memory at most), so long contexts fit."""
    from lcf.eval.xc import contains_rate
    from lcf.eval.harness import first_line
    from lcf.eval.metrics import squad_scores

    bad = [m for m in methods if m not in METHODS + QUANTIZED]
    if bad:
        raise LCFError(f"unknown methods {bad}; expected some of {list(METHODS + QUANTIZED)}")
    if any(m in QUANTIZED for m in methods) and not hasattr(translator, "encode"):
        raise LCFError("translated-int8 / translated-int4 quantise a rank-r map's codes; the full ridge map has none "
                       "(cut and tune it with --finetune-steps, or load one with --tuned)")
    if batch_size < 1:
        raise LCFError(f"batch_size (--batch-size) must be at least 1, got {batch_size}")
    model, tok, n = pair.receiver, pair.receiver_tokenizer, len(items)
    stop = stop_ids(model, tok)
    texts: dict[str, list[str]] = {m: [] for m in methods}
    sent: dict[str, list[int]] = {m: [] for m in methods}
    tokens: list[int] = []
    first_x, ahead = None, None
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        feats, ahead = ahead or [pair.features(it) for it in items[lo:hi]], None
        first_x = feats[0][0] if first_x is None else first_x
        if "mismatched" in methods and hi < n:  # the control reads the next item's rows, also across batches
            ahead = [pair.features(it) for it in items[hi:min(n, hi + batch_size)]]
        others = [f[0] for f in feats[1:]] + [ahead[0][0] if ahead else first_x]
        tokens += [len(f[0]) for f in feats]
        for method in methods:
            made = [pair.without_context(items[lo + i]) if method == "alone" else
                    (*unflat_kv(_rows(method, translator, x, y, other).to(y.dtype), p, pair.receiver_rope), p.tail)
                    for i, ((x, y, p), other) in enumerate(zip(feats, others))]
            new = greedy(model, [m[0] for m in made], [m[2] for m in made], [m[1] for m in made], max_new_tokens,
                         stop)
            texts[method] += [tok.decode(t, skip_special_tokens=True).strip() for t in new]
            if method in ("translated",) + QUANTIZED and hasattr(translator, "encode"):
                scheme = method.split("-")[1] if "-" in method else "none"
                sent[method] += [len(TokenMessage(translator.encode(f[0]), {}).to_bytes(scheme)) for f in feats]
    res: dict[str, Any] = {"n": n, "item_ids": [it.id for it in items], "scores": {}, "predictions": {}}
    golds = [it.answers for it in items]
    for method in methods:
        preds = [first_line(t) for t in texts[method]]
        scores = squad_scores(preds, golds) | {"contains": contains_rate(texts[method], golds),
                                               "slots": sum(tokens) / n}
        if sent[method]:
            scores["bytes_sent"] = sum(sent[method]) / n
        if any(it.distractors for it in items):
            scores["other"] = contains_rate(texts[method], [it.distractors or [""] for it in items])
        res["scores"][method] = scores
        res["predictions"][method] = [{"id": it.id, "pred": pr, "text": t, "gold": it.answers}
                                      for it, pr, t in zip(items, preds, texts[method])]
    return res


def _rows(method: str, translator: Any, x: torch.Tensor, y: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The receiver rows a method puts at the context's positions (``other``: the next item's sharer rows)."""
    if method == "text":
        return y
    if method == "translated":
        return translator(x)
    if method in QUANTIZED:
        scheme = method.split("-")[1]
        return translator.decode(dequantize_rows(quantize_rows(translator.encode(x), scheme), scheme))
    if method == "mismatched":
        return translator(other)
    if method == "zero":
        return torch.zeros_like(y)
    return translator.y_mean.expand_as(y)


def _dataset(pairs: Sequence[str], data_root: str | None) -> tuple[list, list, dict]:
    from omegaconf import OmegaConf

    from lcf.registry import datasets

    spec = OmegaConf.to_container(OmegaConf.from_dotlist(list(pairs)))
    if data_root:
        spec["data_root"] = data_root
    dataset = datasets.build(spec, "data")
    if not hasattr(dataset, "split_examples"):
        raise LCFError(f"data.type={spec.get('type')!r} is not a cross-context dataset")
    train, val = dataset.split_examples()
    return list(train), list(val), spec


def counts_per_set(per_set: Sequence[int], sets: int, option: str) -> list[int]:
    """``--{option}-items``: one number for every ``--{option}`` data set, or one per set."""
    if len(per_set) not in (1, sets):
        raise LCFError(f"--{option}-items takes one number or one per --{option} data set ({sets}), "
                       f"got {list(per_set)}")
    return list(per_set) * sets if len(per_set) == 1 else list(per_set)


def rows_that_fit(pair: Pair, items: Iterable[Any], skipped: list[str]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(sharer rows, receiver rows) of each item; ids of items whose prompts exceed a sliding window go to
    ``skipped`` instead."""
    for it in items:
        try:
            yield pair.features(it)[:2]
        except WindowError:
            skipped.append(it.id)


def fit_contexts(specs: Sequence[Sequence[str]], per_set: Sequence[int], data_root: str | None, seed: int
                 ) -> list[Any]:
    """Up to ``per_set[i]`` distinct contexts from the training split of data set i, shuffled together."""
    fit: list[Any] = []
    for spec, limit in zip(specs, counts_per_set(per_set, len(specs), "fit")):
        seen: dict[str, Any] = {}
        for it in _dataset(spec, data_root)[0]:
            seen.setdefault(it.sharer_context, it)
        contexts = list(seen.values())
        random.Random(seed).shuffle(contexts)
        fit += contexts[:limit]
    random.Random(seed + 1).shuffle(fit)
    return fit


def main(argv: Sequence[str] | None = None) -> None:
    from lcf.models.loading import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("receiver", help="card name, local folder or hub id")
    ap.add_argument("sharer", help="card name, local folder or hub id")
    ap.add_argument("--out", required=True, help="folder for results.json and report.md")
    ap.add_argument("--data", nargs="+", required=True, metavar="KEY=VALUE", help="evaluation data (its val split)")
    ap.add_argument("--fit", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                    help="a data set whose training contexts fit the map (repeat the option for several)")
    ap.add_argument("--fit-items", type=int, nargs="+", default=[1500],
                    help="distinct contexts per --fit data set (one number for all, or one per set)")
    ap.add_argument("--held", type=int, default=40, help="fitting contexts held out to choose the ridge strength")
    ap.add_argument("--translator", default=None, help="safetensors file: loaded if it exists, else fitted and saved "
                    "there (a few hundred MB; keep it out of the repository)")
    ap.add_argument("--finetune-steps", type=int, default=0, help="fine-tune a rank --rank cut of the ridge map "
                    "end to end for this many steps (0: report the ridge map itself)")
    ap.add_argument("--train", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                    help="fine-tuning data, its train split (repeat the option to mix several sets)")
    ap.add_argument("--train-items", type=int, nargs="+", default=[400],
                    help="items per --train data set (one number for all, or one per set)")
    ap.add_argument("--rank", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--mse-weight", type=float, default=1.0)
    ap.add_argument("--features-dtype", choices=["float32", "float16"], default="float32",
                    help="keep the fine-tuning rows in memory in this dtype (float16: half the memory)")
    ap.add_argument("--init", default=None, metavar="FILE", help="fine-tune from this tuned map (of the same "
                    "ridge map) instead of the ridge map's rank-r cut: a second training stage")
    ap.add_argument("--tuned", default=None, help="safetensors file of the fine-tuned translation: loaded if it "
                    "exists, else trained and saved there")
    ap.add_argument("--export", default=None, metavar="DIR", help="write the rank-r map as a per-token adapter "
                    "(adapter_config.json + adapter.safetensors) that `lcf send` / `lcf receive` and load_adapter use")
    ap.add_argument("--data-root", default=None, help="data files root (default $LCF_DATA_ROOT)")
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--exclude", nargs="+", default=[], metavar="RESULTS_JSON",
                    help="leave out the items these earlier reports (kv_translate or lcf eval-xc) scored")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--batch-size", type=int, default=8, help="items read and answered together (lower it for long "
                    "contexts: two batches' rows are in memory, ~0.2 MB a context token in fp32)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    _, val, spec = _dataset(args.data, args.data_root)
    if args.exclude:
        from lcf.eval.xc import ids_in_results

        gone, before = ids_in_results(args.exclude), len(val)
        val = [it for it in val if str(it.id) not in gone]
        if not val:
            raise LCFError(f"--exclude left none of the {before} validation items; raise the data's val_size "
                           f"(e.g. --data ... val_size={2 * before})")
        spec["excluded"] = {"reports": [Path(p).name for p in args.exclude], "items": len(gone)}
    rng = random.Random(args.seed)
    items = [val[i] for i in sorted(rng.sample(range(len(val)), min(args.items, len(val))))]
    loading = bool(args.translator) and Path(args.translator).exists()
    if not loading and not args.fit:
        raise LCFError("nothing to translate with: give --fit data to fit the map, or --translator FILE "
                       "of a fitted one")
    r, s = load_model(args.receiver, dtype="float32"), load_model(args.sharer, dtype="float32")
    pair = Pair(r.model, r.tokenizer, s.model, s.tokenizer)
    if loading:
        translator, report = Ridge.load(args.translator)
        if (report.get("sharer"), report.get("receiver")) != (args.sharer, args.receiver):
            raise LCFError(f"{args.translator} was fitted for sharer {report.get('sharer')!r} -> receiver "
                           f"{report.get('receiver')!r}, not {args.sharer!r} -> {args.receiver!r}; "
                           f"pass another --translator")
    else:
        fit = fit_contexts(args.fit, args.fit_items, args.data_root, args.seed)
        skipped: list[str] = []
        held = list(rows_that_fit(pair, fit[:args.held], skipped))
        translator, report = Ridge.fit(rows_that_fit(pair, fit[args.held:], skipped), held)
        report |= {"fit": [dict(kv.split("=", 1) for kv in f) for f in args.fit],
                   "fit_contexts": len(fit) - len(skipped), "skipped_too_long": len(skipped),
                   "sharer": args.sharer, "receiver": args.receiver}
        if args.translator:
            translator.save(args.translator, report)
    if args.finetune_steps > 0 or (args.tuned and Path(args.tuned).exists()):
        from kv_tune import tuned_from_args

        translator, report = tuned_from_args(args, pair, translator, report)
    if args.export:
        if not hasattr(translator, "encode"):
            raise LCFError("--export writes a rank-r map; add --finetune-steps N (or --tuned FILE of a tuned one)")
        from lcf.export import export_token_map

        export_token_map(translator, args.export, sharer=s, receiver=r, training=report, overwrite=True)
    res = run(pair, translator, items, args.methods, batch_size=args.batch_size)
    res["setup"] = {"data": spec, "items": len(items), "seed": args.seed} | report
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, separators=(",", ":")))
    table, fitted = format_table(res), report.get("ridge", report)
    tuned = (f" Cut to rank {report['rank']} and fine-tuned: {json.dumps(report['finetune'])}."
             if "finetune" in report else "")
    (out / "report.md").write_text(f"# Receiver reading the sharer's translated cache of the context\n\n{table}\n\n"
                                   f"{len(items)} items of {spec.get('type')}; ridge fitted on {fitted['tokens']} "
                                   f"tokens, lambda {fitted['lambda']}, held-out R^2 {fitted['r2']}.{tuned}\n")
    print(table)


if __name__ == "__main__":
    main()
