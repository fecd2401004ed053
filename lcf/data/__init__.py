"""Training data: instruction data (shared context) and cross-context data, features and batching.

The dataset components are registered in :data:`lcf.registry.datasets` by their modules, which the
registry imports on first use: ``instruct_json`` (instruction data for translators), ``eval_task``, the
cross-context datasets ``fact_transfer`` (synthetic), ``squad_xc``, ``hotpotqa_xc`` and ``musique_xc``,
``chat_hub`` (OpenHermes-2.5 and other chat datasets) and ``xc_mix`` (several of them mixed with item
counts). The cross-context machinery lives in :mod:`lcf.data.xc` (``features``: examples and prompts;
``dataset``: the base class and its split; ``qa``: the QA benchmarks; ``mix``: ``xc_mix``). The Lightning
DataModule lives in :mod:`lcf.data.datamodule`.

Importing this package imports none of them: the runtime needs only :mod:`lcf.data.features` and
:mod:`lcf.data.xc.features`. The names below are still importable from here (``from lcf.data import
XCData``); each loads its module when first asked for.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_HOMES: dict[str, str] = {
    **dict.fromkeys(("BATCH_KEYS", "pad_token_id"), "features"),
    **dict.fromkeys(("DataError", "DataFileNotFoundError", "InstructData", "InstructExample", "build_features",
                     "collate", "load_hub_dataset", "read_instruct_file", "resolve_data_file"), "instruct"),
    **dict.fromkeys(("ContextTooLongError", "XCError", "XCExample", "receiver_features",
                     "receiver_message", "sharer_features", "xc_features"), "xc.features"),
    **dict.fromkeys(("SPAN_SCHEMES", "SpanError", "split_spans", "token_span_ids"), "spans"),
    "EvalTaskData": "task_data",
    "XCData": "xc.dataset",
    "FactTransferData": "fact_transfer",
    **dict.fromkeys(("HotpotQAXCData", "MuSiQueXCData", "SQuADXCData"), "xc.qa"),
    "ChatHubData": "chat_hub",
    "XCMix": "xc.mix",
}
#: old names still answered for one release, with a DeprecationWarning: old name -> (new name, its module)
_RENAMED: dict[str, tuple[str, str]] = {"CrossContextError": ("XCError", "xc.features")}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        import warnings

        new, home = _RENAMED[name]
        warnings.warn(f"lcf.data.{name} is deprecated: use lcf.data.{new} (lcf.data.{home}.{new})",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(f"lcf.data.{home}"), new)
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lcf.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lcf.data.{home}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
