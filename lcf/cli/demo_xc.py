"""The demo's cross-context part (``lcf demo --xc recipes/crosscontext.yaml``, off by default):
the sharer reads a text the receiver never sees, and a latent message carries what it read. Trains the
recipe (about 20 minutes on a 2-core CPU for recipes/crosscontext.yaml; a 100-step run of 7 minutes,
measured, answered 7.5% against 12.5% for the zero-message control: too short to carry anything), sends one message
through ``lcf.runtime`` (``send`` on the sharer's side, ``receive`` on the receiver's), then scores the
held-out items with the receiver alone, LCF-X and its two controls (an all-zero message, another
context's message): only a gain that the controls do not share is information from the sharer.
"""
from __future__ import annotations

import time
from pathlib import Path

#: A context written for the demo (not a training sentence) and its question.
CONTEXT = "Notes from the registry office. Orla Brennick moved last spring and now lives in Oslo, near the harbour."
QUESTION = "Where does Orla Brennick live?"


def xc_note(scores: dict[str, dict[str, float]]) -> str:
    """One sentence on what the controls say about the message."""
    lcfx = scores["lcf-x"]["contains"]
    controls = max(v["contains"] for k, v in scores.items() if k.startswith("lcf-x ("))
    alone = scores["receiver alone"]["contains"]
    if lcfx <= max(controls, alone):
        return (f"The message does not help here: LCF-X {100 * lcfx:.0f}% against {100 * max(controls, alone):.0f}% "
                f"without it (the run may be too short: recipes/crosscontext.yaml trains 600 steps).")
    return (f"LCF-X answers {100 * lcfx:.0f}% of the held-out questions; the receiver alone {100 * alone:.0f}% and the "
            f"controls at most {100 * controls:.0f}%: the difference is what the message carried. The values come "
            f"from lists that training also uses, so this shows a choice among known values being transferred, "
            f"not arbitrary text.")


def run_xc_demo(recipe: str = "recipes/crosscontext.yaml", *, console=None, limit: int = 40) -> dict:
    from rich.console import Console
    from rich.table import Table

    from lcf.eval.xc import build_xc_systems, evaluate_xc, held_out_items
    from lcf.export import export
    from lcf.runtime import load_adapter
    from lcf.training.run import train

    con = console or Console(width=120)
    t0 = time.perf_counter()
    con.rule(f"cross-context 1/3 train {recipe}")
    run = train(recipe)
    train_s = time.perf_counter() - t0
    out = export(run, Path(run) / "adapter", overwrite=True)
    adapter = load_adapter(out)

    con.rule("cross-context 2/3 one message through lcf.runtime")
    message = adapter.send(CONTEXT)  # the sharer's side: a few KB of K/V, no text
    con.print(f"sharer read: {CONTEXT!r}\nmessage: {len(message.to_bytes()):,} bytes; receiver is asked: {QUESTION!r}")
    answers = Table(show_lines=True)
    for col in ("receiver alone", "receiver + message"):
        answers.add_column(col, overflow="fold")
    answers.add_row(adapter.receive(message, QUESTION, max_new_tokens=16, fuse=False),
                    adapter.receive(message, QUESTION, max_new_tokens=16))
    con.print(answers)

    con.rule(f"cross-context 3/3 {limit} held-out contexts")
    items, _ = held_out_items(adapter, limit=limit)
    systems = build_xc_systems(adapter, ["receiver", "lcf-x", "zero", "mismatched"])
    results = evaluate_xc(systems, items, max_new_tokens=8, latency_runs=0)
    table = Table(title=f"{len(items)} held-out contexts: does the answer contain the right city?")
    for col in ("system", "contains", "EM"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for name, s in results["scores"].items():
        table.add_row(name, f"{100 * s['contains']:.1f}%", f"{100 * s['em']:.1f}%")
    con.print(table)
    con.print(xc_note(results["scores"]))
    con.print(f"cross-context training took {train_s / 60:.1f} min")
    return {"scores": results["scores"], "adapter": str(out), "train_seconds": round(train_s, 1)}
