"""Reading JSON-list and JSONL data files row by row, with errors that name the file and line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lcf.errors import LCFError

Row = dict[str, Any]


class DataError(LCFError, ValueError):
    """A data file or dataset row that cannot be used (the message names the file and row)."""


def read_rows(path: Path) -> list[tuple[str, Row]]:
    """``(where, row)`` pairs of a JSONL file or a JSON list; ``where`` names the file, the row index
    and, for JSONL, the line (``data.jsonl line 7 (row 5)``)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
        out = [(f"{path} row {i}", r) for i, r in enumerate(rows)]
    else:
        out = []
        for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 etc. occur in rows
            if not line.strip():
                continue
            try:
                out.append((f"{path} line {lineno} (row {len(out)})", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {lineno}: not valid JSON ({exc.msg}); expected one object per line") from exc
    for where, row in out:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__} {str(row)[:60]!r}")
    return out
