"""`lcf params RECIPE... [key=value]`: the offline dry run — parameter counts next to the papers' figures."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from lcf.errors import LCFError


def _millions(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:,.2f}M" if n >= 1e5 else f"{n / 1e3:,.1f}K"


def print_params(recipes: Sequence[str], overrides: Sequence[str] = (), console=None) -> int:
    """Validate and count every recipe; print one table. Returns the number of recipes that failed."""
    from rich.console import Console
    from rich.table import Table

    from lcf.config import load_recipe, validate_recipe
    from lcf.dry_run import count_recipe, load_figures

    con = console or Console(width=None if sys.stdout.isatty() else 150)
    figures = load_figures()
    table = Table(title="translator parameters built from the cards' shapes (no weights), next to the papers")
    for col in ("recipe", "translator", "layers", "params", "per layer", "compressor", "receiver LoRA", "bf16 MB",
                "published", "diff"):
        table.add_column(col, no_wrap=True)
    failed = 0
    sources: list[str] = []
    for path in recipes:
        try:
            count = count_recipe(validate_recipe(load_recipe(path, overrides), origin=path), path, figures)
        except LCFError as exc:
            failed += 1
            print(f"FAIL {path}: {exc}", file=sys.stderr)
            continue
        fig, diff = count.figure, count.difference()
        published = "-" if fig is None else (_millions(fig.params) if fig.params else "none")
        if fig is not None:
            if fig.source not in sources:
                sources.append(fig.source)
            published += f" [{sources.index(fig.source) + 1}]"
        table.add_row(count.name, count.translator, str(count.fused_layers), f"{count.params:,}",
                      _millions(count.per_layer), f"{count.compressor_params:,}" if count.compressor_params else "-",
                      f"{count.receiver_lora_params:,}" if count.receiver_lora_params else "-",
                      f"{count.bf16_mb:,.1f}", published, "-" if diff is None else f"{diff:+.2%}")
    con.print(table)
    for k, source in enumerate(sources, start=1):
        con.print(f"[{k}] {source}")
    con.print("params: the translator (gates included) after pruning where the figure counts a pruned adapter; "
              "compressor: LCF-X's span summariser, counted apart; receiver LoRA: the recipe's "
              "receiver_adapter, counted apart; bf16 MB: all three, 2 bytes a parameter. "
              "diff: against the published count, which the papers round (478M, 19.4M, 6.24M).")
    return failed
