"""Exception types. Every message says what was wrong, what was expected and how to fix it."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class LCFError(Exception):
    """Base class of every error lcf raises on purpose."""


class RegistryError(LCFError, KeyError):
    """Unknown, duplicate or unimportable component."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RecipeError(LCFError, ValueError):
    """A recipe is malformed: bad key, bad type, bad value. The message names the key path."""


class ModelLoadError(LCFError, OSError):
    """A model could not be located, prepared or loaded."""


class AlignmentError(LCFError, ValueError):
    """Layer maps or token alignments that cannot be built."""


class KVCacheError(LCFError, ValueError):
    """A KV cache that does not have the expected layout."""


def close_matches(name: str, options: Iterable[str], n: int = 3) -> list[str]:
    options = list(options)
    hits = difflib.get_close_matches(name, options, n=n, cutoff=0.5)
    if not hits:  # substring matches help with prefixes such as "lcf" -> "lcf_lowrank"
        hits = [o for o in options if name.lower() in o.lower() or o.lower() in name.lower()][:n]
    return hits


def suggest(name: str, options: Iterable[str]) -> str:
    """' Did you mean 'x'?' or '' — meant to be appended to a message."""
    hits = close_matches(name, options)
    if not hits:
        return ""
    return " Did you mean " + " or ".join(repr(h) for h in hits) + "?"
