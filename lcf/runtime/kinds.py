"""Adapter kinds: how an adapter's translator is used, read from the translator class (``adapter_kind``).

- ``fused``: the translator edits the receiver's cache with the sharer's, position by position (shared
  context; with a compressor, LCF-X summaries). The default of every translator.
- ``per_token``: the sharer's rows of a context are mapped to the receiver's rows, one code per context
  token (:mod:`lcf.token_map`); trained, exported and loaded by their own paths.

:func:`lcf.runtime.load_adapter`, ``lcf train`` and ``lcf export`` dispatch on the kind, never on a type name.
"""
from __future__ import annotations

from lcf.errors import RegistryError

FUSED, PER_TOKEN = "fused", "per_token"
#: translator types of adapters written before their class was registered, and their kind
LEGACY_TYPES = {"token_kv_lowrank": PER_TOKEN}


def adapter_kind(translator_type: str) -> str:
    """The kind of adapter a registered translator type makes (a class attribute ``adapter_kind``)."""
    from lcf.registry import translators

    if translator_type in LEGACY_TYPES:
        return LEGACY_TYPES[translator_type]
    try:
        cls = translators.get(translator_type)
    except RegistryError:
        return FUSED  # unknown types fail where they are built, with the registry's suggestions
    return getattr(cls, "adapter_kind", FUSED)
