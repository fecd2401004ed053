"""Training data: instruction data (shared context) and cross-context data, features and batching.

The dataset components are registered in :data:`lcf.registry.datasets` by their modules, which the
registry imports on first use: ``instruct_json`` (instruction data for translators), ``eval_task``, the
cross-context datasets ``fact_transfer`` (synthetic), ``squad_xc``, ``hotpotqa_xc`` and ``musique_xc``,
``chat_hub`` (OpenHermes-2.5 and other chat datasets) and ``xc_mix`` (several of them mixed with item
counts). The Lightning DataModule lives in :mod:`lcf.data.datamodule`.

Importing this package imports none of them: the runtime needs only :mod:`lcf.data.features` and
:mod:`lcf.data.crosscontext`. The names below are still importable from here (``from lcf.data import
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
    **dict.fromkeys(("ContextTooLongError", "CrossContextError", "XCExample", "receiver_features",
                     "receiver_message", "sharer_features", "xc_features"), "crosscontext"),
    **dict.fromkeys(("SPAN_SCHEMES", "SpanError", "split_spans", "token_span_ids"), "spans"),
    "EvalTaskData": "task_data",
    "XCData": "xcdata",
    "FactTransferData": "fact_transfer",
    **dict.fromkeys(("HotpotQAXCData", "MuSiQueXCData", "SQuADXCData"), "xc_qa"),
    "ChatHubData": "chat_hub",
    "XCMix": "xc_mix",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lcf.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lcf.data.{home}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
