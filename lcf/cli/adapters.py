"""`lcf list --adapters DIR` (adapters with their headline score and size) and the card update of
`lcf eval --card` (scores with their controls written into each adapter's README.md)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lcf.export_card import adapter_rows, scores_of, write_scores


def print_adapters(root: str, console) -> int:
    from rich.table import Table

    from lcf.errors import LCFError

    if not Path(root).is_dir():
        raise LCFError(f"--adapters {root}: not a folder; give the folder that holds exported adapters "
                       f"(e.g. checkpoints)")
    rows = adapter_rows(root)
    table = Table(title=f"adapters under {root}")
    for col in ("adapter", "receiver <- sharer(s)", "translator", "parameters", "size", "headline score"):
        table.add_column(col, justify="right" if col in ("parameters", "size", "headline score") else "left")
    for r in rows:
        where = Path(r["path"]).relative_to(root).as_posix() if Path(r["path"]).is_relative_to(root) else r["path"]
        if "error" in r:
            table.add_row(where, f"[red]unreadable: {r['error']}[/red]", "", "", "", "")
            continue
        score = (f"{100 * r['score']:.1f} (mean of {r['score_tasks']}: {', '.join(r['tasks'])})"
                 if r["score"] is not None else "none yet (lcf eval --card)")
        table.add_row(where, f"{r['receiver']} <- {' + '.join(r['sharers'])}", r["translator"],
                      f"{r['num_parameters'] / 1e6:.2f}M" if r["num_parameters"] else "?",
                      f"{r['size_bytes'] / 1e6:.1f} MB" if r["size_bytes"] else "?", score)
    console.print(table if rows else f"no adapters (folders with adapter_config.json) under {root}")
    return 0


def write_cards(results: dict[str, Any], folders: Sequence[Path], labels: Sequence[str]) -> list[Path]:
    """Write each adapter's scores (with the receiver alone and its controls) into its card."""
    return [write_scores(folder, scores_of(results, label)) for folder, label in zip(folders, labels)]
