"""Paired comparisons of systems evaluated on the same items, from one or more ``results.json``.

    python -m lcf.eval.paired reports/base/results.json reports/lcf/results.json \\
        --pairs "science_mc:receiver" "science_mc:science_mc (mismatched)" --metric acc_norm

Reports written by separate ``lcf eval`` runs combine when they scored the same items (same task,
split, ``--limit`` and ``--seed``): predictions are joined by task and item id, and only items every
compared system has are used. For each pair ``A:B`` it prints ``A - B`` in points with a paired
bootstrap 95% interval (items resampled with replacement, the same resample for both systems), and for
each fused system the "follows the sharer" count: on items where receiver and sharer alone pick
different options, how often the fused system picks the sharer's option, the receiver's, or another
(``--follow-base`` compares with another system instead of the receiver alone: for an adapter composed with a
receiver LoRA, its ``(LoRA alone)`` system, so that the count isolates what the sharer's cache changes).
A side may average several systems item by item, written ``A1+A2`` (for example two training seeds of one
adapter against their two controls: ``"lcf+lcf_s1:lcf (mismatched)+lcf_s1 (mismatched)"``); the interval
then resamples items only, not seeds. Cross-context reports (``lcf eval-xc``) compare with ``--metric f1``,
``em`` or ``contains``, per item as that report scores them (SQuAD-normalised; F1 and EM on the answer's first line).
"""
from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lcf.errors import LCFError

CORRECT_KEY = {"acc": ("correct", "pred"), "acc_norm": ("correct_norm", "pred_norm"), "accuracy": ("correct", "pred")}
#: per-item scores of cross-context reports (`lcf eval-xc`: rows with pred, text and gold answers)
XC_METRICS = ("f1", "em", "contains")
XC_TASK = "xc"  # the one task of a cross-context report


def load_predictions(paths: Sequence[str | Path]) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """system -> (task, item id) -> prediction row, merged over the given results files (later files win)."""
    out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for system, tasks in (data.get("predictions") or {}).items():
            rows = out.setdefault(system, {})
            if isinstance(tasks, list):  # a cross-context report: one list of rows per system
                tasks = {XC_TASK: tasks}
            for task, preds in tasks.items():
                for row in preds:
                    rows[(task, str(row["id"]))] = row
    if not out:
        raise LCFError(f"no predictions in {list(map(str, paths))}: give results.json files written by `lcf eval`")
    return out


def merge_results(paths: Sequence[str | Path]) -> dict[str, Any]:
    """One results dict from several ``lcf eval`` runs (systems, scores, predictions and adapters
    united; config of the first file), e.g. to draw one report for all of them. When the runs scored
    different samples of a task (another ``--limit``), every system is cut to the items all runs share
    and its multiple-choice scores are recomputed on them."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in runs[0].items()}
    for data in runs[1:]:
        for key in ("systems", "scores", "predictions", "adapters"):
            merged.setdefault(key, {}).update(data.get(key) or {})
    tasks = {}
    for task, info in runs[0].get("tasks", {}).items():
        ids = [i for i in info.get("item_ids") or [] if all(i in set(r.get("tasks", {}).get(task, {}).get("item_ids")
                                                                    or []) for r in runs)]
        if not ids:
            raise LCFError(f"task {task!r}: the runs {list(map(str, paths))} share no item; merge runs of the same "
                           f"--tasks and --seed (a smaller --limit samples a subset of a larger one)")
        tasks[task] = info | {"n": len(ids), "item_ids": ids}
        keep = set(ids)
        for system, per_task in merged.get("predictions", {}).items():
            rows = [r for r in per_task.get(task, []) if str(r["id"]) in keep]
            if len(rows) != len(info.get("item_ids") or []) and rows and "correct" in rows[0]:
                per_task[task] = rows
                score = {"acc": sum(r["correct"] for r in rows) / len(rows)}
                if "correct_norm" in rows[0]:
                    score["acc_norm"] = sum(r["correct_norm"] for r in rows) / len(rows)
                else:
                    score = {"accuracy": score["acc"]}
                merged["scores"][system][task] = score | {"primary": score.get("acc_norm", score.get("accuracy", score["acc"]))}
    merged["tasks"] = tasks
    return merged


def _field(row: dict[str, Any], metric: str, which: int) -> Any:
    key = CORRECT_KEY.get(metric, CORRECT_KEY["acc"])[which]
    if key not in row:  # chat-format reports have one metric only
        key = CORRECT_KEY["acc"][which]
    return row[key]


def item_score(row: dict[str, Any], metric: str) -> float:
    """One item's score: 0/1 for the multiple-choice metrics, F1 / EM / contains for cross-context rows."""
    if metric not in XC_METRICS:
        return float(bool(_field(row, metric, 0)))
    if not ("text" in row and isinstance(row.get("gold"), list)):
        raise LCFError(f"--metric {metric} scores cross-context reports (`lcf eval-xc`), whose rows carry the "
                       f"answer 'text' and a list of 'gold' answers; this row has {sorted(row)}: use --metric acc "
                       f"or acc_norm")
    from lcf.eval.xc import contains_rate
    from lcf.eval.metrics import exact_match, f1

    if metric == "contains":
        return contains_rate([row["text"]], [row["gold"]])
    return (f1 if metric == "f1" else exact_match)(row["pred"], row["gold"])


def paired_difference(preds: dict[str, dict], a: str, b: str, *, metric: str = "acc_norm", task: str | None = None,
                      resamples: int = 4000, seed: int = 0) -> dict[str, Any]:
    """``a - b`` in points over the items both systems have (optionally one task), with a paired
    bootstrap 95% interval. ``a`` or ``b`` may be ``S1+S2+...``: the per-item mean of those systems."""
    members = {name: _members(preds, name) for name in (a, b)}
    every = [m for ms in members.values() for m in ms]
    keys = sorted(k for k in preds[every[0]] if all(k in preds[m] for m in every) and (task is None or k[0] == task))
    if not keys:
        raise LCFError(f"systems {a!r} and {b!r} share no item{'' if task is None else f' of task {task!r}'}: "
                       f"evaluate them on the same tasks, --limit and --seed")
    score = {name: [sum(item_score(preds[m][k], metric) for m in ms) / len(ms) for k in keys]
             for name, ms in members.items()}
    diff = [x - y for x, y in zip(score[a], score[b])]
    n = len(diff)
    rng = random.Random(seed)
    stats = sorted(sum(diff[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo, hi = stats[int(0.025 * resamples)], stats[min(int(0.975 * resamples), resamples - 1)]
    return {"a": a, "b": b, "n": n, "a_score": 100 * sum(score[a]) / n, "b_score": 100 * sum(score[b]) / n,
            "diff": 100 * sum(diff) / n, "low": 100 * lo, "high": 100 * hi}


def _members(preds: dict[str, dict], name: str) -> list[str]:
    """The systems a side names: itself, or each part of ``S1+S2`` (averaged item by item)."""
    parts = [name] if name in preds else [p.strip() for p in name.split("+")]
    missing = [p for p in parts if p not in preds]
    if missing:
        raise LCFError(f"system {missing[0]!r} is not in the results; known: {sorted(preds)} (average several "
                       f"systems with 'S1+S2')")
    return parts


def follows_sharer(preds: dict[str, dict], fused: str, *, receiver: str = "receiver", sharer: str = "sharer",
                   metric: str = "acc_norm", task: str | None = None) -> dict[str, Any]:
    """On items where receiver and sharer alone disagree: how often ``fused`` picks the sharer's option,
    the receiver's, or a third one, and how often the sharer was right there."""
    keys = [k for k in preds[fused] if k in preds[receiver] and k in preds[sharer] and (task is None or k[0] == task)]
    pick = {s: {k: _field(preds[s][k], metric, 1) for k in keys} for s in (fused, receiver, sharer)}
    split = [k for k in keys if pick[receiver][k] != pick[sharer][k]]
    out = {"system": fused, "disagree": len(split), "sharer": 0, "receiver": 0, "other": 0, "sharer_right": 0,
           "follows_sharer_when_right": 0}
    for k in split:
        p = pick[fused][k]
        out["sharer" if p == pick[sharer][k] else "receiver" if p == pick[receiver][k] else "other"] += 1
        if bool(_field(preds[sharer][k], metric, 0)):
            out["sharer_right"] += 1
            out["follows_sharer_when_right"] += int(p == pick[sharer][k])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lcf.eval.paired", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results.json files of `lcf eval` runs on the same items")
    ap.add_argument("--pairs", nargs="*", default=[], metavar="A:B", help="system pairs to compare (A - B)")
    ap.add_argument("--follow", nargs="*", default=[], metavar="SYSTEM", help="fused systems for the follows-the-sharer count")
    ap.add_argument("--follow-base", default="receiver", metavar="SYSTEM",
                    help="the system whose picks the sharer's are compared with (default: receiver; for an adapter "
                         "composed with a receiver LoRA, e.g. 'NAME (LoRA alone)')")
    ap.add_argument("--metric", default="acc_norm", choices=[*sorted(CORRECT_KEY), *XC_METRICS])
    ap.add_argument("--task", default=None, help="one task only (default: every item of every task)")
    ap.add_argument("--resamples", type=int, default=4000)
    ap.add_argument("--merge", default=None, metavar="DIR", help="also write one report (table, JSON, plots) of all runs")
    args = ap.parse_args(argv)
    preds = load_predictions(args.results)
    if args.merge:
        from lcf.eval.report import write_report

        print(f"merged report written to {write_report(merge_results(args.results), args.merge)}")
    if args.pairs:
        print(f"| A - B ({args.metric}) | n | A | B | A - B [95% interval] |\n|---|---:|---:|---:|---|")
    for pair in args.pairs:
        a, sep, b = pair.rpartition(":")
        if not sep:
            raise LCFError(f"--pairs entries look like 'SYSTEM_A:SYSTEM_B', got {pair!r}")
        d = paired_difference(preds, a, b, metric=args.metric, task=args.task, resamples=args.resamples)
        print(f"| {a} - {b} | {d['n']} | {d['a_score']:.1f} | {d['b_score']:.1f} | "
              f"{d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] |")
    for system in args.follow:
        base = args.follow_base
        if base not in preds:
            raise LCFError(f"--follow-base {base!r} is not in the results; systems there: {', '.join(sorted(preds))}")
        f = follows_sharer(preds, system, receiver=base, metric=args.metric, task=args.task)
        print(f"{system}: on {f['disagree']} items where {base} and sharer disagree it picks the sharer's option "
              f"{f['sharer']}, {base}'s {f['receiver']}, another {f['other']}; where the sharer is right "
              f"({f['sharer_right']}) it follows it {f['follows_sharer_when_right']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
