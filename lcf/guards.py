"""Non-finite numbers refused wherever they enter: recipe values, tensors of checkpoints and adapters,
numbers written into cards. Needs only torch (``lcf.runtime`` imports it)."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from lcf.errors import LCFError


class NonFiniteError(LCFError, ValueError):
    """NaN or infinite values where only finite numbers make sense."""


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity, in the given order."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    bad = []
    for name, t in items:
        if torch.is_tensor(t) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def describe_names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], where: str, fix: str) -> None:
    """Raise :class:`NonFiniteError` naming the tensors of ``where`` that hold NaN or infinite values."""
    bad = nonfinite_tensors(tensors)
    if bad:
        raise NonFiniteError(f"{where}: {len(bad)} tensor(s) hold NaN or infinite values ({describe_names(bad)}); "
                             f"{fix}")


def nonfinite_floats(value: Any, path: str = "") -> list[str]:
    """Dotted key paths of the NaN or infinite floats inside nested dicts and lists (``a.b[2]``)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path or "value"]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in nonfinite_floats(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in nonfinite_floats(v, f"{path}[{i}]")]
    return []


def check_finite_values(value: Any, where: str, fix: str) -> None:
    """Raise :class:`NonFiniteError` naming every NaN or infinite float inside ``value``."""
    bad = nonfinite_floats(value)
    if bad:
        raise NonFiniteError(f"{where}: {describe_names(bad)} {'is' if len(bad) == 1 else 'are'} NaN or infinite; "
                             f"{fix}")
