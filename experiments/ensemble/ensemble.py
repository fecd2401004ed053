"""What the sharer's own answers could add to a receiver: a check on how much there is to transfer.

    python experiments/ensemble/ensemble.py reports/all/results.json reports/lora/results.json --task arc_easy \\
        --systems receiver "lora receiver" "sci (mismatched)" --weights 0 0.1 0.25 0.5 1 2

For each system S and weight w it picks, per item, the option with the highest ``score_S + w * score_sharer``,
where a score is the option's log-likelihood as lm-evaluation-harness scores it (``acc``: summed;
``acc_norm``: divided by the option's length in characters), read from the ``scores`` of ``lcf eval``'s
multiple-choice predictions. This hands S the sharer's *final* preference among the options, formed after the
sharer read every option: more about each item than the sharer's prompt cache holds (the options are not in
the prompt). When S plus the sharer's answers gains little over S, a cache-specific gain larger than that is
not to be expected from this sharer on these items. The weighted sum is one way to combine the two, not the
best possible one; the best weight is chosen on the same items, so its gain is optimistic. Each gain comes
with a paired bootstrap 95% interval (``lcf.eval.paired``).

An analysis, not the library (moved out of ``lcf.eval``); its report: docs/results/sharer-ceiling.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from lcf.errors import LCFError
from lcf.eval.paired import load_predictions, paired_difference
from lcf.eval.scoring import first_argmax


def choice_lengths(task: str, ids: Sequence[str], data_root: str | None = None) -> dict[str, list[int]]:
    """Option lengths in characters of the items ``ids`` of ``task`` (its default split)."""
    from lcf.eval.tasks import load_task

    items = {str(it.id): it for it in load_task(task, data_root=data_root).items()}
    missing = [i for i in ids if i not in items]
    if missing:
        raise LCFError(f"{len(missing)} item ids of the results (e.g. {missing[0]!r}) are not in task {task!r}'s "
                       f"default split; pass the --task the results were evaluated on")
    return {i: [len(c) for c in items[i].choices] for i in ids}


def combined(preds: dict[str, dict], system: str, sharer: str, weight: float, task: str,
             lengths: dict[str, list[int]] | None) -> dict[tuple[str, str], dict[str, Any]]:
    """Rows of ``system + weight * sharer`` (per-option scores added) on the items both have."""
    out = {}
    for key, row in preds[system].items():
        other = preds[sharer].get(key)
        if key[0] != task or other is None:
            continue
        a, b = row.get("scores"), other.get("scores")
        if not a or not b or len(a) != len(b):
            raise LCFError(f"item {key[1]!r}: {system!r} and {sharer!r} need per-option 'scores' of equal length "
                           f"(multiple-choice results of `lcf eval`), got {a!r} and {b!r}")
        total = [x + weight * y for x, y in zip(a, b)]
        row_out = {"correct": first_argmax(total) == row["gold"]}
        if lengths is not None:
            n = lengths[key[1]]
            row_out["correct_norm"] = first_argmax([t / m for t, m in zip(total, n)]) == row["gold"]
        out[key] = row_out
    if not out:
        raise LCFError(f"{system!r} and {sharer!r} share no item of task {task!r}")
    return out


def sweep(preds: dict[str, dict], systems: Sequence[str], weights: Sequence[float], *, task: str,
          sharer: str = "sharer", metric: str = "acc_norm", data_root: str | None = None,
          resamples: int = 4000) -> list[dict[str, Any]]:
    """Per system: the score at every weight, and the best weight's gain over the system with its interval."""
    for name in (*systems, sharer):
        if name not in preds:
            raise LCFError(f"system {name!r} is not in the results; known: {sorted(preds)}")
    lengths = None
    if metric == "acc_norm":
        lengths = choice_lengths(task, sorted({k[1] for k in preds[sharer] if k[0] == task}), data_root)
    out = []
    for system in systems:
        scores, rows = {}, {}
        for w in weights:
            rows[w] = combined(preds, system, sharer, w, task, lengths)
            key = "correct_norm" if metric == "acc_norm" else "correct"
            scores[w] = 100 * sum(r[key] for r in rows[w].values()) / len(rows[w])
        best = max(weights, key=lambda w: (scores[w], -w))
        base = rows[0.0] if 0.0 in rows else combined(preds, system, sharer, 0.0, task, lengths)
        d = paired_difference({"with": rows[best], "without": base}, "with", "without", metric=metric,
                              resamples=resamples)
        out.append({"system": system, "scores": scores, "best_weight": best, "gain": d["diff"], "low": d["low"],
                    "high": d["high"], "n": d["n"]})
    return out


def format_sweep(rows: Sequence[dict[str, Any]], metric: str) -> str:
    weights = list(rows[0]["scores"])
    lines = [f"| system ({metric}) | " + " | ".join(f"w={w:g}" for w in weights) +
             " | best w: gain over the system [95% interval] |", "|---|" + "---:|" * len(weights) + "---|"]
    for r in rows:
        lines.append(f"| {r['system']} | " + " | ".join(f"{r['scores'][w]:.1f}" for w in weights) +
                     f" | {r['best_weight']:g}: {r['gain']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}] |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python experiments/ensemble/ensemble.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results.json files of `lcf eval` runs on the same items")
    ap.add_argument("--task", required=True, help="the multiple-choice task, e.g. arc_easy")
    ap.add_argument("--systems", nargs="+", required=True, help="systems to combine with the sharer's answers")
    ap.add_argument("--sharer", default="sharer", help="the sharer-alone system's name in the results")
    ap.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.1, 0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--metric", default="acc_norm", choices=["acc", "acc_norm"])
    ap.add_argument("--data-root", default=None, help="data files root (default $LCF_DATA_ROOT)")
    ap.add_argument("--resamples", type=int, default=4000)
    args = ap.parse_args(argv)
    if 0.0 not in args.weights:
        args.weights = [0.0, *args.weights]
    rows = sweep(load_predictions(args.results), args.systems, args.weights, task=args.task, sharer=args.sharer,
                 metric=args.metric, data_root=args.data_root, resamples=args.resamples)
    print(format_sweep(rows, args.metric))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
