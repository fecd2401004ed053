"""`lcf demo`: train -> export -> load through the runtime -> answer -> compare, on the real pair.

Runs ``recipes/quickstart.yaml`` (or the recipe given), exports the adapter, loads it in the light
runtime, answers a few questions with and without the sharer's cache, and prints a table of the
receiver alone vs receiver + adapter on the held-out validation split (response-token loss and
perplexity, computed on identical tokens), next to the adapter's controls (an all-zero sharer cache,
another example's sharer cache).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

QUESTIONS = (
    "Name three primary colours.",
    "What is the capital of France?",
    "Give one tip for staying healthy.",
)


@torch.no_grad()
def response_loss(communicator, batches, *, fuse: bool, sharer_transform=None) -> dict[str, float]:
    """Token-weighted response cross-entropy and perplexity over ``batches``."""
    total, tokens = 0.0, 0
    for batch in batches:
        out = communicator(batch, fuse=fuse, sharer_transform=sharer_transform)
        total += float(out["loss_sum"])
        tokens += int(out["tokens"])
    loss = total / max(tokens, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": tokens}


def compare_on_validation(adapter, val_features: list[dict], batch_size: int = 8) -> dict[str, dict[str, float]]:
    """Receiver alone, receiver + adapter, and the two controls on the same response tokens: the adapter
    fed an all-zero sharer cache, and fed the sharer cache of another example (its own alignment clipped
    to that prompt). A gain that survives the controls is adaptation, not what the sharer read."""
    from lcf.data.features import collate, pad_token_id
    from lcf.eval.systems import mismatch_partner, zero_sharer_cache

    r_pad, s_pad = pad_token_id(adapter.receiver.tokenizer), pad_token_id(adapter.sharer.tokenizer)

    def batches(features):
        return [collate(features[i:i + batch_size], r_pad, s_pad) for i in range(0, len(features), batch_size)]

    own = batches(val_features)
    prompts = [str(f["sharer_prompt_ids"]) for f in val_features]
    comm = adapter.communicator.eval()
    scores = {
        "receiver alone": response_loss(comm, own, fuse=False),
        "receiver + adapter": response_loss(comm, own, fuse=True),
        "control: zero sharer cache": response_loss(comm, own, fuse=True, sharer_transform=zero_sharer_cache),
    }
    if len(set(prompts)) > 1:
        other = batches([mismatched(f, val_features[mismatch_partner(prompts, i)]) for i, f in enumerate(val_features)])
        scores["control: another example's cache"] = response_loss(comm, other, fuse=True)
    return scores


def mismatched(own: dict, other: dict) -> dict:
    """``own`` reading ``other``'s sharer prompt: its alignment clipped to that prompt's length."""
    last = len(other["sharer_prompt_ids"]) - 1
    return own | {"sharer_prompt_ids": list(other["sharer_prompt_ids"]),
                  "align_index": [min(s, last) if m else 0 for s, m in zip(own["align_index"], own["align_mask"])]}


def control_note(scores: dict[str, dict[str, float]]) -> str:
    """What the controls say about the adapter's gain, in one or two sentences."""
    alone, fused = scores["receiver alone"]["loss"], scores["receiver + adapter"]["loss"]
    controls = [v["loss"] for k, v in scores.items() if k.startswith("control")]
    gain = alone - fused
    if gain <= 0:
        return f"The adapter does not lower the receiver's loss here ({alone:.4f} -> {fused:.4f})."
    kept = alone - min(controls) if controls else 0.0
    if kept <= 0:
        return (f"The adapter lowers the loss by {gain:.4f} nats and neither control beats the receiver alone: "
                f"the gain needs this prompt's sharer cache.")
    if kept >= gain:
        return (f"The adapter lowers the loss by {gain:.4f} nats, but a control does as well ({kept:.4f}): the gain "
                f"is adaptation of the receiver to the data, not information from the sharer's cache.")
    return (f"The adapter lowers the loss by {gain:.4f} nats; fed a control cache it still lowers it by {kept:.4f} "
            f"({100 * kept / gain:.0f}% of the gain): that part is adaptation to the data. {gain - kept:.4f} nats "
            f"depend on this prompt's sharer cache.")


def run_demo(recipe: str = "recipes/quickstart.yaml", overrides=(), *, adapter_dir: str | None = None,
             skip_train: bool = False, console=None) -> dict:
    from rich.console import Console
    from rich.table import Table

    from lcf.config import load_recipe, validate_recipe
    from lcf.export import export
    from lcf.runtime import load_adapter
    from lcf.training.run import build_data, run_dir_of, train

    con = console or Console(width=120)
    cfg = validate_recipe(load_recipe(recipe, overrides), origin=recipe)
    run = run_dir_of(cfg)
    t0 = time.perf_counter()
    if not skip_train:
        con.rule(f"1/4 train {recipe}")
        run = train(recipe, list(overrides))
    train_s = time.perf_counter() - t0
    con.rule("2/4 export")
    out = export(run, adapter_dir or Path(run) / "adapter")
    con.print(f"adapter written to {out}: " + ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.2f} MB)" for p in sorted(out.iterdir())))

    con.rule("3/4 load through lcf.runtime and answer")
    adapter = load_adapter(out)
    answers = Table(title="answers (greedy, 48 new tokens)", show_lines=True)
    for col in ("question", "receiver alone", "receiver + adapter"):
        answers.add_column(col, overflow="fold")
    for q in QUESTIONS:
        answers.add_row(q, adapter.generate(q, max_new_tokens=48, fuse=False), adapter.generate(q, max_new_tokens=48))
    con.print(answers)

    con.rule("4/4 held-out validation split")
    data = build_data(cfg)
    _, val = data.prepare(adapter.receiver.tokenizer, adapter.sharer.tokenizer, adapter.aligner)
    scores = compare_on_validation(adapter, val)
    table = Table(title=f"receiver {adapter.receiver.name} <- sharer {adapter.sharer.name}: "
                        f"{len(val)} held-out examples, response tokens only")
    for col in ("system", "loss", "perplexity", "tokens"):
        table.add_column(col, justify="right" if col != "system" else "left")
    for name, s in scores.items():
        table.add_row(name, f"{s['loss']:.4f}", f"{s['ppl']:.2f}", str(s["tokens"]))
    con.print(table)
    con.print(control_note(scores))
    a = adapter.config
    con.print(f"translator {a['translator']['type']} {a['translator']['args']}: {a['num_parameters']:,} parameters, "
              f"{a['size_bytes'] / 1e6:.2f} MB; training took {train_s / 60:.1f} min")
    result = {"scores": scores, "adapter": str(out), "train_seconds": round(train_s, 1),
              "num_parameters": a["num_parameters"], "size_bytes": a["size_bytes"]}
    (Path(run) / "demo_results.json").write_text(json.dumps(result, indent=2))
    return result
