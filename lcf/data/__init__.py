"""Training data: instruction data (shared context) and cross-context data, features and batching.

Importing this package registers the dataset components ``instruct_json`` (instruction data for
translators) and the cross-context datasets ``fact_transfer`` (synthetic), ``squad_xc``,
``hotpotqa_xc`` and ``musique_xc``, and ``xc_mix`` (several of them mixed with item counts). The Lightning DataModule lives in :mod:`lcf.data.datamodule`
(it imports ``lightning``, this package does not).
"""
from lcf.data.features import BATCH_KEYS, pad_token_id
from lcf.data.instruct import (
    DataError,
    DataFileNotFoundError,
    InstructData,
    InstructExample,
    build_features,
    collate,
    load_hub_dataset,
    read_instruct_file,
    resolve_data_file,
)
from lcf.data.crosscontext import (
    ContextTooLongError,
    CrossContextError,
    XCExample,
    receiver_features,
    receiver_message,
    sharer_features,
    xc_features,
)
from lcf.data.spans import SPAN_SCHEMES, SpanError, split_spans, token_span_ids
from lcf.data.task_data import EvalTaskData
from lcf.data.xcdata import XCData
from lcf.data.fact_transfer import FactTransferData
from lcf.data.xc_qa import HotpotQAXCData, MuSiQueXCData, SQuADXCData
from lcf.data.chat_hub import ChatHubData  # registers `chat_hub` (OpenHermes-2.5 and other chat datasets)
from lcf.data.xc_mix import XCMix

__all__ = [
    "EvalTaskData",
    "BATCH_KEYS",
    "SPAN_SCHEMES",
    "ContextTooLongError",
    "CrossContextError",
    "DataError",
    "DataFileNotFoundError",
    "FactTransferData",
    "HotpotQAXCData",
    "InstructData",
    "InstructExample",
    "MuSiQueXCData",
    "SQuADXCData",
    "SpanError",
    "XCData",
    "XCMix",
    "XCExample",
    "build_features",
    "collate",
    "load_hub_dataset",
    "pad_token_id",
    "read_instruct_file",
    "receiver_features",
    "receiver_message",
    "resolve_data_file",
    "sharer_features",
    "split_spans",
    "token_span_ids",
    "xc_features",
]
