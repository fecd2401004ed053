"""Several sharers feeding one receiver, in one place:

- :mod:`lcf.several.recipe`      the ``sharers:`` list of a recipe: entries, validation, one pair and translator each
- :mod:`lcf.several.data`        features and batches with one sharer part per sharer (torch only)
- :mod:`lcf.several.datamodule`  the Lightning data module over them (training only)
- :mod:`lcf.several.runtime`     an exported several-sharer adapter: per-sharer tensors, configs and prompts

Importing this package loads only the recipe helpers (no torch, no Lightning), so the runtime stays light.
"""
from lcf.several.recipe import (ENTRY_KEYS, TEMPLATES, build_pairs, build_translators, check_sharers, entry_recipe,
                                has_several, sharer_entries)

__all__ = ["ENTRY_KEYS", "TEMPLATES", "build_pairs", "build_translators", "check_sharers", "entry_recipe",
           "has_several", "sharer_entries"]
