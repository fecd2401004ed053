"""Where the shipped model/pair cards and recipes are: the checkout's top-level ``registry/`` and
``recipes/`` folders, or, in an installed wheel, copies of them in ``lcf/_shipped/`` (see setup.py)."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent


def shipped_dir(name: str) -> Path | None:
    """The folder ``name`` (``registry`` or ``recipes``): the checkout's when lcf runs from one, else the
    copy inside the installed package; None when neither exists."""
    checkout = CHECKOUT_DIR / name
    if checkout.is_dir() and (CHECKOUT_DIR / "pyproject.toml").is_file():
        return checkout
    packaged = PACKAGE_DIR / "_shipped" / name
    return packaged if packaged.is_dir() else None


def find_recipe(path: str | os.PathLike) -> Path:
    """``path`` when it exists (or is absolute); else the shipped recipe it names, so that
    ``lcf validate recipes/quickstart.yaml`` (or ``quickstart.yaml``) works from any directory."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    root = shipped_dir("recipes")
    if root is None:
        return p
    parts = p.parts[1:] if p.parts and p.parts[0] == "recipes" else p.parts
    candidate = root.joinpath(*parts) if parts else root
    return candidate if candidate.is_file() else p
