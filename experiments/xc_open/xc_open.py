"""Open-information check of a cross-context adapter: unseen values, several people, message size.

    python experiments/xc_open/xc_open.py ADAPTER --out docs/results/crosscontext-open [--items 100] [--people 1 2 3 5]

On held-out ``fact_transfer`` worlds with ``values=open`` (every validation value is absent from the
training data) and ``phrasing=varied``, for each number of people per context: receiver alone,
LCF-X (fp32 / int8 / int4) and its zero and mismatched controls, with *contains* (the answer names
the right value) and *other* (it names another person's value of the same attribute: a summary that
does not bind values to people scores high here). Then, for adapters with per-span slots, the same
adapter read with 2..16 slots and each quantisation: accuracy against message bytes
(``accuracy_vs_bytes.png``).

For adapters trained with repeats (``fact_transfer`` ``repeat_fraction`` > 0), or with ``--repeat``: the
same held-out worlds with the receiver asked to repeat the message word for word (``repeat``):
*contains* then says whether the asked value survives the message at all, whatever the question.

A research driver, not the library (moved out of ``lcf.eval``); the adapters it checked were trained by
``recipes/crosscontext_open.yaml`` and ``recipes/crosscontext_repeat.yaml`` in this folder (dead ends:
docs/results/crosscontext-open, crosscontext-open-1person, crosscontext-repeat).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch

from lcf.eval.xc import LatentXC, ReceiverOnly, evaluate_xc, format_xc_table, held_out_items

QUANTS = ("none", "int8", "int4")


def open_data(adapter: Any, people: int, items: int) -> dict[str, Any]:
    """The held-out open-value worlds with ``people`` people each: the adapter's training data options
    (attributes, seed) with open values and varied phrasing (the training size does not matter)."""
    trained = dict((adapter.config.get("training") or {}).get("data") or {})
    base = trained if trained.get("type") == "fact_transfer" else {"type": "fact_transfer"}
    return base | {"values": "open", "phrasing": "varied", "num_paragraphs": people, "num_train": 1,
                   "num_val": items}


def set_slots(adapter: Any, slots: int) -> None:
    """Read a per-span-slot adapter with ``slots`` slots (spans beyond the last slot merge into it)."""
    comp = adapter.compressor
    comp.slots = comp.summary_len = slots


def repeat_check(adapter: Any, people: int, items: int, batch_size: int = 8) -> dict[str, Any]:
    """The held-out worlds with :data:`~lcf.data.fact_transfer.REPEAT_QUESTION` as the question (the gold
    answer stays the asked value, so *contains* = the value is in the repeated text): LCF-X, its
    controls, and the receiver repeating the context it read as text."""
    from dataclasses import replace

    from lcf.data.fact_transfer import REPEAT_QUESTION

    its, facts = held_out_items(adapter, open_data(adapter, people, items))
    its = [replace(it, question=REPEAT_QUESTION) for it in its]
    systems = [ReceiverOnly(adapter, own="full"), LatentXC(adapter), LatentXC(adapter, control="zero"),
               LatentXC(adapter, control="mismatched")]
    res = evaluate_xc(systems, its, max_new_tokens=48, batch_size=batch_size, latency_runs=0)
    res["selection"] = facts
    res["overlap"] = repeat_overlap(res["predictions"], [it.sharer_context for it in its])
    return res


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def repeat_overlap(predictions: dict[str, list[dict]], contexts: list[str]) -> dict[str, dict[str, float]]:
    """Per system: mean word-set Jaccard of each repeat with its own context (``own``) and with the next
    item's context (``other``, the chance level of a fluent but uninformed repeat)."""
    out = {}
    for name, preds in predictions.items():
        own = [_jaccard(_words(p["pred"]), _words(c)) for p, c in zip(preds, contexts)]
        other = [_jaccard(_words(p["pred"]), _words(c)) for p, c in zip(preds, contexts[1:] + contexts[:1])]
        out[name] = {"own": sum(own) / max(1, len(own)), "other": sum(other) / max(1, len(other))}
    return out


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def run(adapter: Any, people: list[int], items: int, slot_sweep: list[int], sweep_people: int,
        batch_size: int = 8, on_result: Any = None, repeat: bool | None = None) -> dict[str, Any]:
    """``on_result(results)`` is called after every setting (to save partial results of long runs)."""
    out: dict[str, Any] = {"people": {}, "sweep": {}}
    trained = (adapter.config.get("training") or {}).get("data") or {}
    if repeat or (repeat is None and float(trained.get("repeat_fraction") or 0) > 0):
        out["repeat"] = repeat_check(adapter, min(people), items, batch_size)
        print(f"## asked to repeat the message ({min(people)} people per context)\n"
              f"{format_xc_table(out['repeat'])}\n", flush=True)
        if on_result:
            on_result(out)
    for n in people:
        its, facts = held_out_items(adapter, open_data(adapter, n, items))
        # the ceiling: the receiver reading the sharer's context as text (what a perfect message would give)
        systems = [ReceiverOnly(adapter), ReceiverOnly(adapter, own="full"),
                   *(LatentXC(adapter, quantize=q) for q in QUANTS),
                   LatentXC(adapter, control="zero"), LatentXC(adapter, control="mismatched")]
        res = evaluate_xc(systems, its, max_new_tokens=12, batch_size=batch_size, latency_runs=0)
        res["selection"] = facts
        out["people"][str(n)] = res
        print(f"## {n} people per context ({len(its)} items)\n{format_xc_table(res)}\n", flush=True)
        if on_result:
            on_result(out)
    comp = adapter.compressor
    if slot_sweep and comp.init_args.get("slots", 1) > 1 and comp.init_args.get("slot_mode") == "spans":
        trained = comp.slots
        its, _ = held_out_items(adapter, open_data(adapter, sweep_people, items))
        for slots in slot_sweep:
            set_slots(adapter, slots)
            res = evaluate_xc([LatentXC(adapter, quantize=q) for q in QUANTS], its, max_new_tokens=12,
                              batch_size=batch_size, latency_runs=0)
            out["sweep"][str(slots)] = {name: s for name, s in res["scores"].items()}
            print(f"## {slots} slots, {sweep_people} people\n{format_xc_table(res)}\n", flush=True)
            if on_result:
                on_result(out)
        set_slots(adapter, trained)
    return out


def plot(results: dict[str, Any], path: Path, people: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for n, res in results["people"].items():  # the trained slot count: one point per quantisation
        names = [("lcf-x" if q == "none" else f"lcf-x {q}", q) for q in QUANTS]
        pts = [(res["scores"][k]["bytes_sent"], 100 * res["scores"][k]["contains"], q) for k, q in names
               if k in res["scores"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=":", marker="x", label=f"{n} people")
        for x, y, q in pts:
            ax.annotate("fp32" if q == "none" else q, (x, y), textcoords="offset points", xytext=(4, -9), fontsize=7)
    for q, marker in zip(QUANTS, "osD"):
        name = "lcf-x" if q == "none" else f"lcf-x {q}"
        pts = sorted((s[name]["bytes_sent"], 100 * s[name]["contains"], int(k))
                     for k, s in results["sweep"].items())
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label="fp32" if q == "none" else q)
        for x, y, k in pts:
            ax.annotate(f"{k}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("message bytes (log scale; sweep labels: slots per layer and head)")
    ax.set_ylabel("answer contains the right value (%)")
    ax.set_title(f"LCF-X on unseen values (sweep: {people} people per context)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(results: dict[str, Any], sweep_people: int) -> str:
    lines = ["# LCF-X on open information (unseen values, several people per context)", ""]
    if "repeat" in results:
        lines += [f"## Asked to repeat the message ({results['repeat']['n']} held-out worlds)", "",
                  format_xc_table(results["repeat"]), "",
                  "contains here: the repeated text names the asked value (the message carried it).", "",
                  "| system | word overlap with its context | with another item's context |", "|---|---:|---:|"]
        for name, o in results["repeat"].get("overlap", {}).items():
            lines.append(f"| {name} | {o['own']:.3f} | {o['other']:.3f} |")
        lines.append("")
    for n, res in results["people"].items():
        lines += [f"## {n} people per context ({res['n']} held-out worlds)", "", format_xc_table(res), ""]
    if results["sweep"]:
        lines += [f"## Slots and quantisation ({sweep_people} people): contains % / bytes", "",
                  "| slots | fp32 | int8 | int4 |", "|---:|---:|---:|---:|"]
        for k, s in results["sweep"].items():
            cells = [f"{100 * s[n]['contains']:.1f} / {s[n]['bytes_sent']:.0f}"
                     for n in ("lcf-x", "lcf-x int8", "lcf-x int4")]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("contains: the whole greedy answer contains the right value (SQuAD-normalised); other: it "
                 "contains another person's value of the asked attribute; EM / F1 on the first line.")
    return "\n".join(lines) + "\n"


def main() -> None:
    from lcf.eval.compose import resolve_adapter
    from lcf.runtime import load_adapter

    ap = argparse.ArgumentParser(prog="python experiments/xc_open/xc_open.py", description=__doc__.splitlines()[0])
    ap.add_argument("adapter")
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--people", type=int, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--slots", type=int, nargs="*", default=[2, 4, 8, 16], help="slot counts of the size sweep")
    ap.add_argument("--sweep-people", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", action="store_const", const=True, default=None,
                    help="also ask for the message repeated (default: when the adapter was trained with repeats)")
    args = ap.parse_args()
    torch.manual_seed(0)
    adapter = load_adapter(resolve_adapter(args.adapter))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(results: dict[str, Any]) -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "report.md").write_text(report(results, args.sweep_people))
        plot(results, out / "accuracy_vs_bytes.png", args.sweep_people)

    save(run(adapter, args.people, args.items, args.slots, args.sweep_people, args.batch_size, on_result=save,
             repeat=args.repeat))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
