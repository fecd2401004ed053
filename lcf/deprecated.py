"""Modules kept at an old import path for one release: each re-exports its new home's names and warns once,
when first imported. CONTRIBUTING.md lists what moved where."""
from __future__ import annotations

import warnings


def warn_moved(old: str, new: str, renamed: dict[str, str] | None = None) -> None:
    """Warn that module ``old`` moved to ``new`` (``renamed``: old name -> new name of what changed its name).
    Called from the old module's body, so the warning names the module that imported it."""
    also = "".join(f"; {a} is {b}" for a, b in (renamed or {}).items())
    warnings.warn(f"{old} is deprecated and will be removed in the next release: import from {new}{also}",
                  DeprecationWarning, stacklevel=3)
