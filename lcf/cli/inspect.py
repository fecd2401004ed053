"""`lcf inspect`: what a recipe's pair looks like to lcf — KV layouts, layer map, token alignment."""
from __future__ import annotations

import time

import torch

from lcf.config import load_recipe, validate_recipe
from lcf.models.kv import prefill
from lcf.pair import build_pair

SAMPLE = "Héllo wörld! In 2024, 12345 + 678 = 13023.    Code: def f(x):\n    return x ** 2  # 平方 🚀"


def inspect_recipe(recipe_path: str, overrides=(), *, text: str | None = None, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    con = console or Console(width=120)
    recipe = validate_recipe(load_recipe(recipe_path, overrides), origin=recipe_path)
    t0 = time.perf_counter()
    pair = build_pair(recipe)
    con.print(f"loaded sharer [bold]{pair.sharer.name}[/] and receiver [bold]{pair.receiver.name}[/] "
              f"in {time.perf_counter() - t0:.1f}s")
    text = SAMPLE if text is None else text

    kv = Table(title="KV cache per layer after prefill of the sample (batch, kv_heads, tokens, head_dim)")
    for col in ("role", "model", "layers", "layer kinds", "first layer K", "last layer K", "prefill"):
        kv.add_column(col)
    for role, lm in (("sharer", pair.sharer), ("receiver", pair.receiver)):
        ids = lm.tokenizer(text, return_tensors="pt").input_ids
        t0 = time.perf_counter()
        with torch.inference_mode():
            view = prefill(lm.model, ids)
        dt = time.perf_counter() - t0
        kinds = "".join("S" if s.sliding_window else "G" for s in view.specs)
        kv.add_row(role, lm.name, str(view.num_layers), kinds, str(view.shapes()[0]), str(view.shapes()[-1]),
                   f"{dt * 1000:.0f} ms")
    con.print(kv)
    con.print("layer kinds: G = global attention, S = sliding window (keeps only the most recent positions)")

    kind = (recipe.get("layer_map") or {}).get("type", "terminal")
    con.print(f"[bold]layer map[/] ({kind}, receiver layer <- sharer layer): {pair.layer_map}")

    al = pair.aligner.align_texts(pair.receiver.tokenizer, pair.sharer.tokenizer, text)
    table = Table(title=f"token alignment of the sample ({pair.aligner!r})")
    for col in ("r", "receiver token", "s", "sharer token", "coverage"):
        table.add_column(col)
    for i, r_piece, j, s_piece, cov in al.rows(pair.receiver.tokenizer, pair.sharer.tokenizer):
        table.add_row(str(i), r_piece, "-" if j is None else str(j), s_piece if j is not None else "(no fusion)",
                      f"{cov:.2f}")
    con.print(table)
    con.print(f"{len(al)} receiver tokens, {len(al.sharer_ids)} sharer tokens, {al.num_aligned} fused positions")
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    chat = pair.aligner.align_messages(pair.receiver.tokenizer, pair.sharer.tokenizer, messages)
    con.print(f"chat prompt {messages!r}: {len(chat)} receiver tokens, {chat.num_aligned} fused "
              f"(template tokens get no fusion)")
