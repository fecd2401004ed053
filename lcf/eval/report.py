"""Write an evaluation's results: ``results.json``, ``report.md`` and PNG plots.

Works on the JSON-safe dict :func:`lcf.eval.harness.evaluate` returns (or ``results.json`` read
back), so reports can be redrawn without the models:

* ``report.md`` — a markdown table: one row per system; one column per task (its headline metric
  in %, with the number of items), the mean over tasks, adapter size and batch-1 latency.
* ``accuracy.png`` — headline score per system per task (grouped bars).
* ``size_vs_accuracy.png`` — adapter parameters vs mean score, Pareto frontier highlighted.
* ``gates.png`` — per-layer gate values (receiver layer x {K, V}) of every adapter.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["PLOTS", "format_table", "mean_score", "write_report"]

PLOTS: tuple[str, ...] = ("accuracy.png", "size_vs_accuracy.png", "gates.png")
_SHORT = {"accuracy": "acc", "em_f1": "EM / F1", "exact_match": "EM"}


def mean_score(results: dict[str, Any], system: str) -> float:
    """Mean headline score of ``system`` over the tasks."""
    values = [s["primary"] for s in results["scores"][system].values()]
    return sum(values) / len(values)


def _cell(scores: dict[str, float], metric: str) -> str:
    if "acc_norm" in scores:  # lm-eval format: acc and acc_norm side by side
        return f"{100 * scores['acc']:.1f} / {100 * scores['acc_norm']:.1f}"
    if metric == "em_f1":
        return f"{100 * scores['em']:.1f} / {100 * scores['f1']:.1f}"
    return f"{100 * scores['primary']:.1f}"


def _size(desc: dict[str, Any]) -> tuple[str, str]:
    if not desc.get("num_parameters"):
        return "-", "-"
    return f"{desc['num_parameters'] / 1e6:.2f}M", f"{desc.get('size_bytes', 0) / 1e6:.1f}"


def format_table(results: dict[str, Any]) -> str:
    """The markdown table of ``report.md`` (scores in %)."""
    tasks = results["tasks"]
    cloze = results.get("config", {}).get("mc_format") == "lmeval"
    short = {t: "acc / acc_norm" if cloze and v.get("kind") == "mc" else _SHORT.get(v["metric"], v["metric"])
             for t, v in tasks.items()}
    head = ["system", *(f"{t} ({short[t]}, n={v['n']})" for t, v in tasks.items()),
            "mean", "adapter params", "adapter MB", "TTFT ms", "e2e ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, desc in results["systems"].items():
        scores = results["scores"][name]
        lat = desc.get("latency") or {}
        params, mb = _size(desc)
        row = [name, *(_cell(scores[t], v["metric"]) for t, v in tasks.items()), f"{100 * mean_score(results, name):.1f}",
               params, mb, f"{lat['ttft_ms']:.1f}" if lat else "-", f"{lat['e2e_ms']:.1f}" if lat else "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lat = next((d["latency"] for d in results["systems"].values() if d.get("latency")), None)
    notes = [
        "# lcf evaluation",
        "",
        format_table(results),
        "",
        ("Multiple choice as lm-evaluation-harness scores it: the raw cloze prompt (no chat template, e.g. "
         "`Question: ...\\nAnswer:`), each option ` {choice}`; acc = argmax of the summed log-likelihood, acc_norm ="
         " argmax of the log-likelihood per character of the choice (the mean column and plots use acc_norm)."
         if cfg.get("mc_format") == "lmeval" else
         f"Multiple choice: the letter a greedy reply (at most {cfg.get('generate_letter_tokens')} tokens) starts with; other "
         "replies count as wrong (accuracy)." if cfg.get("generate_letter") else
         f"Multiple choice: argmax of the summed log-likelihood of each {'letter' if cfg['letter_scoring'] else 'option text'}"
         " given the zero-shot prompt in the chat template, options listed with letters (accuracy).")
        + " QA: greedy generation, SQuAD EM / F1 (first line); GSM8K: exact"
        " match of the final number. Scores in %; every system sees the same items.",
        "Controls: `(zero)` fuses an all-zero sharer cache through the adapter; `(mismatched)` fuses the sharer"
        " cache of another item (alignment clipped to that prompt's length).",
    ]
    if lat:
        notes.append(f"Latency: batch 1 on {lat['device']}, median of {lat['runs']} runs after a warm-up; TTFT = "
                     f"prompt to first token, e2e = prompt to {lat['new_tokens']} new tokens (sharer prefill and fusion "
                     f"included; the mismatched control is not timed: it costs what the adapter costs).")
    for label, a in results.get("adapters", {}).items():
        notes.append(f"Adapter `{label}`: {a['translator']}, receiver {a['receiver']} <- sharer {a['sharer']}, "
                     f"{a['num_parameters']:,} parameters.")
    return "\n".join(notes) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_accuracy(results: dict[str, Any], path: Path) -> None:
    plt = _plt()
    tasks, systems = list(results["tasks"]), list(results["systems"])
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(tasks) * max(1, len(systems)) * 0.5 + 2), 4.5))
    for k, name in enumerate(systems):
        ys = [100 * results["scores"][name][t]["primary"] for t in tasks]
        ax.bar([i + (k - (len(systems) - 1) / 2) * width for i in range(len(tasks))], ys, width, label=name)
    ax.set_xticks(range(len(tasks)), [f"{t}\n(n={results['tasks'][t]['n']})" for t in tasks])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title("headline score per task (accuracy / F1 / EM)")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (no other point is at most as large and scores higher)."""
    keep = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 > y) or (x2 < x and y2 >= y) for j, (x2, y2) in enumerate(points) if j != i):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i])


def _is_control(results: dict[str, Any], name: str) -> bool:
    return results["systems"][name].get("control", "none") not in ("none", None)


def _spread_labels(pts: list[tuple[float, float]], gap: float) -> list[float]:
    """Label heights: a label (drawn right of its point, about 1.2 decades wide) moves up until it is
    ``gap`` away from the labels placed before it and from the other points under it."""
    logs = [math.log10(max(x, 1.0)) for x, _ in pts]
    order = sorted(range(len(pts)), key=lambda i: (pts[i][1], pts[i][0]))
    placed: list[tuple[float, float]] = []  # (log10 x, label y)
    out = [0.0] * len(pts)
    for i in order:
        # heights this label must keep clear of: placed labels overlapping it, points under its text
        blocked = [py for px, py in placed if abs(px - logs[i]) < 1.2]
        blocked += [pts[k][1] for k in range(len(pts)) if k != i and 0.0 < logs[k] - logs[i] < 1.2]
        y = pts[i][1]
        while any(abs(b - y) < gap * (1 - 1e-6) for b in blocked):
            y = max(b for b in blocked if abs(b - y) < gap * (1 - 1e-6)) + gap
        out[i] = y
        placed.append((logs[i], y))
    return out


def _plot_size(results: dict[str, Any], path: Path) -> None:
    plt = _plt()
    names = list(results["systems"])
    sizes = [float(results["systems"][n].get("num_parameters") or 0) for n in names]
    smallest = min((x for x in sizes if x > 0), default=1e6)
    plain_x = 10 ** (math.floor(math.log10(smallest)) - 1)  # where plain models (0 parameters) are drawn
    pts = [(x if x > 0 else plain_x, 100 * mean_score(results, n)) for n, x in zip(names, sizes)]
    control = [_is_control(results, n) for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    ax.set_xscale("log")
    for is_control, style in ((False, dict(color="tab:blue", label="system")),
                              (True, dict(facecolors="none", edgecolors="grey", label="control (zero / mismatched)"))):
        chosen = [p for p, c in zip(pts, control) if c == is_control]
        if chosen:
            ax.scatter([p[0] for p in chosen], [p[1] for p in chosen], s=40, zorder=3, **style)
    ys = [p[1] for p in pts]
    gap = 0.055 * max(max(ys) - min(ys), 1.0)
    for n, (x, y), ly, c in zip(names, pts, _spread_labels(pts, gap), control):
        ax.annotate(n, (x, y), xytext=(x * 1.25, ly), textcoords="data", fontsize="x-small", va="center",
                    color="grey" if c else "black",
                    arrowprops=dict(arrowstyle="-", color="lightgrey", lw=0.6) if abs(ly - y) > 1e-9 else None)
    for label, a in results.get("adapters", {}).items():  # `lcf prune` variants: a dashed line to their source
        src = next((n for n in names if a.get("pruned_from") and n == a["pruned_from"]), None)
        if src is not None and label in names:
            (x0, y0), (x1, y1) = pts[names.index(src)], pts[names.index(label)]
            ax.plot([x0, x1], [y0, y1], "--", color="tab:green", lw=0.8, zorder=2)
    main = [i for i, c in enumerate(control) if not c]
    front = [main[i] for i in _pareto([pts[i] for i in main])]
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "o", ms=11, mfc="none", mec="tab:red",
            zorder=4, label="Pareto frontier (controls excluded)")
    if len(front) > 1:
        ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="tab:red", alpha=0.5)
    top = max(p[0] for p in pts) if pts else plain_x * 100
    ticks = [plain_x] + [10 ** k for k in range(int(math.log10(plain_x)) + 1, int(math.ceil(math.log10(top))) + 1)]
    ax.set_xticks(ticks, ["0"] + [f"$10^{{{int(round(math.log10(t)))}}}$" for t in ticks[1:]])
    ax.set_xlim(plain_x / 2, top * 8)
    ax.set_xlabel("adapter parameters (0 = plain model: receiver, sharer, text relay)")
    ax.set_ylabel("mean score over tasks (%)")
    ax.set_title("adapter size vs mean score")
    ax.legend(fontsize="x-small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_gates(results: dict[str, Any], path: Path) -> None:
    plt = _plt()
    adapters = results.get("adapters", {})
    rows = max(len(adapters), 1)
    fig, axes = plt.subplots(rows, 1, figsize=(9.0, 1.0 + 1.6 * rows), squeeze=False, layout="constrained")
    if not adapters:
        axes[0][0].axis("off")
        axes[0][0].text(0.5, 0.5, "no adapter evaluated", ha="center", va="center")
    image = None
    for ax, (label, a) in zip(axes[:, 0], adapters.items()):
        gates = {int(k): v for k, v in a["gates"].items()}
        layers = max(a.get("receiver_layers") or 0, max(gates, default=-1) + 1)
        grid = [[gates[t][kv] if t in gates else math.nan for t in range(layers)] for kv in (0, 1)]
        image = ax.imshow(grid, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        ax.set_yticks([0, 1], ["K", "V"])
        ax.set_xticks(range(layers), [str(t) if layers <= 32 or t % 4 == 0 else "" for t in range(layers)],
                      fontsize="x-small")
        ax.set_title(f"{label}: gate per receiver layer (blank = not fused; evaluation fuses where > 0.5)",
                     fontsize="small")
    axes[-1][0].set_xlabel("receiver layer")
    if image is not None:
        fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.03, pad=0.02, label="sigmoid(gate logit)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``results.json``, ``report.md`` and :data:`PLOTS` into ``out_dir``; return the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(_markdown(results))
    _plot_accuracy(results, out / PLOTS[0])
    _plot_size(results, out / PLOTS[1])
    _plot_gates(results, out / PLOTS[2])
    return out
