"""Several cross-context data sets mixed with item counts (data type ``xc_mix``), and the item picking that
the per-token map's training and its ridge initialisation share.

    data:
      type: xc_mix
      sets:
        - {type: fact_transfer, values: open, num_paragraphs: [1, 3], num_train: 300, seed: 2, items: 300}
        - {type: squad_xc, file: squad/squad_v1.1_train.jsonl, items: 800}
      val_items: 8

Each set is any registered cross-context dataset (its own options) plus ``items``: how many of its training
examples with answers to take (null: all). They are shuffled per set with ``seed``, cut, then shuffled
together with ``seed + 1``. Validation takes up to ``val_items`` of each set's validation split. ``rows_dtype``:
how the per-token map keeps its training rows in memory (float16 halves float32's memory).
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from lcf.data.instruct import DataError
from lcf.errors import RecipeError
from lcf.registry import datasets

COUNT_KEY = "items"


def build_set(spec: Mapping[str, Any], path: str, data_root: str | None) -> tuple[Any, int | None]:
    """One set of a mix: (the dataset, its item count)."""
    if not isinstance(spec, Mapping):
        raise RecipeError(f"{path}: expected a mapping with a 'type' (a cross-context dataset) and 'items', got "
                          f"{spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != COUNT_KEY}
    count = spec.get(COUNT_KEY)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise RecipeError(f"{path}.{COUNT_KEY}: must be an int >= 1 or null (every item), got {count!r}")
    if data_root and "data_root" not in kwargs:
        kwargs["data_root"] = data_root
    dataset = datasets.build(kwargs, path)
    if not hasattr(dataset, "split_examples"):
        raise RecipeError(f"{path}.type: {spec.get('type')!r} is not a cross-context dataset (one whose sharer reads a "
                          f"context of its own, e.g. fact_transfer, squad_xc, hotpotqa_xc)")
    return dataset, count


def check_sets(sets: Any, path: str) -> None:
    """Validate a list of set specs without reading any file (names, arguments, counts)."""
    if not isinstance(sets, (list, tuple)) or not sets:
        raise RecipeError(f"{path}: expected a non-empty list of data sets, e.g. [{{type: squad_xc, items: 400}}]")
    for i, spec in enumerate(sets):
        where = f"{path}[{i}]"
        if not isinstance(spec, Mapping):
            raise RecipeError(f"{where}: expected a mapping with a 'type', got {spec!r}")
        count = spec.get(COUNT_KEY)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise RecipeError(f"{where}.{COUNT_KEY}: must be an int >= 1 or null (every item), got {count!r}")
        datasets.check({k: v for k, v in spec.items() if k != COUNT_KEY}, where, extra={"data_root": None})


def pick(sets: Sequence[Mapping[str, Any]], path: str, data_root: str | None, seed: int, *,
         distinct_contexts: bool = False, val_items: int = 0) -> tuple[list[Any], list[dict[str, Any]]]:
    """Up to ``items`` training examples with answers (or distinct contexts) of each set, shuffled together.
    Returns them and, per set, its spec with the number it gave (and, under ``"val"``, up to ``val_items`` of its
    validation examples with answers, from the same read of the set)."""
    out: list[Any] = []
    used: list[dict[str, Any]] = []
    for i, spec in enumerate(sets):
        dataset, count = build_set(spec, f"{path}[{i}]", data_root)
        train, held = dataset.split_examples()
        if distinct_contexts:
            seen: dict[str, Any] = {}
            for it in train:
                seen.setdefault(it.sharer_context, it)
            train = list(seen.values())
        else:
            train = [it for it in train if it.answers]
        random.Random(seed).shuffle(train)
        taken = train[:count] if count is not None else train
        if not taken:
            raise DataError(f"{path}[{i}] ({spec.get('type')}): its training split has no items with answers")
        out += taken
        used.append({k: v for k, v in spec.items() if k != "data_root"} | {COUNT_KEY: len(taken)})
        if val_items:
            held = [it for it in held if it.answers]
            random.Random(seed).shuffle(held)
            used[-1]["val"] = held[:val_items]
    random.Random(seed + 1).shuffle(out)
    return out, used


@datasets.register("xc_mix")
class XCMix:
    """Cross-context data sets mixed with item counts (see the module docstring)."""

    def __init__(self, sets: list[dict], val_items: int = 8, seed: int = 0, data_root: str | None = None,
                 rows_dtype: str = "float16"):
        check_sets(sets, "data.sets")
        if rows_dtype not in ("float16", "bfloat16", "float32"):
            raise DataError(f"xc_mix: rows_dtype must be float16, bfloat16 or float32, got {rows_dtype!r}")
        self.rows_dtype = rows_dtype
        if isinstance(val_items, bool) or not isinstance(val_items, int) or val_items < 0:
            raise DataError(f"xc_mix: val_items must be an int >= 0, got {val_items!r}")
        self.sets, self.val_items, self.seed, self.data_root = list(sets), val_items, seed, data_root

    @classmethod
    def check_spec(cls, kwargs: Mapping[str, Any], path: str) -> None:
        """Called by ``lcf validate``: the nested sets are checked too."""
        check_sets(kwargs.get("sets"), f"{path}.sets")

    def split_examples(self) -> tuple[list[Any], list[Any]]:
        train, used = pick(self.sets, "data.sets", self.data_root, self.seed, val_items=self.val_items)
        val = [it for u in used for it in u.pop("val", [])]  # each set read once for both splits
        self.used = used
        return train, val
