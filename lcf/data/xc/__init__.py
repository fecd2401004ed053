"""Cross-context data: the sharer reads a context the receiver never sees.

- :mod:`lcf.data.xc.features`  examples (:class:`XCExample`), the sharer's and receiver's prompts, features
- :mod:`lcf.data.xc.dataset`   the base class of cross-context datasets (:class:`XCData`): seeded split, features
- :mod:`lcf.data.xc.qa`        ``squad_xc``, ``hotpotqa_xc``, ``musique_xc``
- :mod:`lcf.data.xc.mix`       ``xc_mix``: several sets mixed with item counts

The synthetic ``fact_transfer`` data lives in :mod:`lcf.data.fact_transfer`. Importing this package imports
none of its modules; the names below load their module when first asked for (``from lcf.data.xc import XCData``).
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module of this package that defines it
_HOMES: dict[str, str] = {
    **dict.fromkeys(("DROP_CONTEXT", "ContextTooLongError", "XCError", "XCExample", "encode_prompt",
                     "receiver_features", "receiver_message", "sharer_features", "xc_features"), "features"),
    **dict.fromkeys(("RECEIVER_CONTEXTS", "XCData", "load_rows", "string_list", "text_field"), "dataset"),
    **dict.fromkeys(("HotpotQAXCData", "MuSiQueXCData", "SQuADXCData", "hotpot_paragraphs"), "qa"),
    **dict.fromkeys(("XCMix", "build_set", "check_sets", "pick"), "mix"),
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lcf.data.xc' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lcf.data.xc.{home}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
