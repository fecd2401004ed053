"""Instruction data for training translators: reading, feature building and batching.

Importing this package registers the ``instruct_json`` dataset component. The Lightning
DataModule lives in :mod:`lcf.data.datamodule` (it imports ``lightning``, this package does not).
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

__all__ = [
    "BATCH_KEYS",
    "DataError",
    "DataFileNotFoundError",
    "InstructData",
    "InstructExample",
    "build_features",
    "collate",
    "load_hub_dataset",
    "pad_token_id",
    "read_instruct_file",
    "resolve_data_file",
]
