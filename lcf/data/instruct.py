"""Instruction-tuning data: Alpaca / GPTeacher / LLaMA-Factory JSON files and hub datasets.

Row formats (a JSON list of objects, or JSONL with one object per line):

``alpaca``        ``instruction``, ``input`` (optional), ``output``
``gpteacher``     ``instruction``, ``input`` (optional), ``response``
``llamafactory``  alpaca plus an optional ``history``: a list of ``[user, assistant]`` pairs
``auto``          per row: ``output`` -> alpaca/llamafactory, ``response`` -> gpteacher

Files are given relative to a data root: the ``data_root`` argument (recipe key ``data_root:``),
else the environment variable ``LCF_DATA_ROOT``. The registered component ``instruct_json``
(:class:`InstructData`) reads them, splits off a validation set and builds features with
:func:`build_features`; :func:`collate` pads features into batches.
"""
from __future__ import annotations

import importlib
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lcf.align.templates import TemplateName
from lcf.data.rows import DataError, read_rows
from lcf.data.features import BATCH_KEYS, DROP_PROMPT, collate, featurize, pad_token_id
from lcf.errors import LCFError
from lcf.registry import datasets

log = logging.getLogger(__name__)

Format = Literal["auto", "alpaca", "gpteacher", "llamafactory"]
FORMATS: tuple[str, ...] = ("auto", "alpaca", "gpteacher", "llamafactory")
DATA_ROOT_ENV = "LCF_DATA_ROOT"

__all__ = [
    "BATCH_KEYS", "DataError", "DataFileNotFoundError", "InstructData", "InstructExample", "build_features",
    "collate", "load_hub_dataset", "pad_token_id", "read_instruct_file", "resolve_data_file",
]


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file that does not exist; the message says which data root was used."""


@dataclass
class InstructExample:
    """One instruction example; ``history`` holds earlier ``(user, assistant)`` turns."""

    instruction: str
    input: str
    response: str
    source: str
    index: int
    history: list[tuple[str, str]] = field(default_factory=list)

    def prompt(self) -> str:
        """The final user turn: the instruction, then the input after a blank line (if any)."""
        return self.instruction + ("\n\n" + self.input if self.input else "")

    def messages(self) -> list[dict[str, str]]:
        """Chat messages of the prompt: the history turns, then the user turn (no response)."""
        out: list[dict[str, str]] = []
        for user, assistant in self.history:
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        out.append({"role": "user", "content": self.prompt()})
        return out


# -- reading -------------------------------------------------------------------------------------
#: The data root used when neither an argument nor ``$LCF_DATA_ROOT`` names one, if it exists (relative
#: to the working directory): the same default as the shipped recipes' ``data_root``.
FALLBACK_DATA_ROOT = "../shared/data"


def default_data_root(data_root: str | os.PathLike | None = None) -> str | None:
    """``data_root`` if given, else ``$LCF_DATA_ROOT``, else :data:`FALLBACK_DATA_ROOT` when that folder
    exists, else None."""
    if data_root is not None and str(data_root):
        return str(data_root)
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return env
    return FALLBACK_DATA_ROOT if Path(FALLBACK_DATA_ROOT).is_dir() else None


def resolve_data_file(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Path:
    """``path`` if absolute, else ``data_root / path`` (cwd when no root); raise if it does not exist."""
    root = default_data_root(data_root)
    p = Path(path).expanduser()
    full = p if p.is_absolute() or root is None else Path(root).expanduser() / p
    if full.is_file():
        return full
    if root is None:
        where = f"no data root is set, so the relative path was resolved against the working directory {os.getcwd()}"
    else:
        origin = ("the data_root argument: --data-root or the recipe's data_root" if data_root is not None else f"env {DATA_ROOT_ENV}" if os.environ.get(
            DATA_ROOT_ENV) else "the default for a checkout beside the shared data")
        where = f"data root {root!r} (from {origin})" + ("" if Path(root).expanduser().is_dir() else ", which does not exist")
    raise DataFileNotFoundError(
        f"data file {str(path)!r} not found at {str(full)!r}; {where}. Set the data root with --data-root DIR "
        f"(lcf eval, lcf eval-xc), the recipe key `data_root: DIR` (or `data.data_root`; `lcf train RECIPE "
        f"data_root=DIR`) or the environment variable {DATA_ROOT_ENV}=DIR, or give an absolute path."
    )


def _text(row: dict, key: str, where: str, *, optional: bool = False) -> str:
    value = row.get(key)
    if value is None and optional:
        return ""
    if key not in row:
        raise DataError(f"{where}: missing key {key!r} (row has keys {sorted(row)})")
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__} {str(value)[:60]!r}")
    return value


def _history(row: dict, where: str) -> list[tuple[str, str]]:
    value = row.get("history")
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{where}: 'history' must be a list of [user, assistant] pairs, got {type(value).__name__}")
    turns: list[tuple[str, str]] = []
    for k, turn in enumerate(value):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise DataError(f"{where}: history[{k}] must be a [user, assistant] pair of strings, got {str(turn)[:80]!r}")
        turns.append((turn[0], turn[1]))
    return turns


def parse_row(row: Any, format: Format, source: str, index: int, where: str) -> InstructExample:
    """Validate one row and turn it into an :class:`InstructExample`; ``where`` prefixes errors."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with 'instruction' etc., got {type(row).__name__}")
    fmt = format
    if fmt == "auto":
        if "output" in row:
            fmt = "llamafactory"
        elif "response" in row:
            fmt = "gpteacher"
        else:
            raise DataError(
                f"{where}: has neither 'output' (alpaca/llamafactory format) nor 'response' (gpteacher format); "
                f"row has keys {sorted(row)}"
            )
    elif fmt not in FORMATS:
        raise DataError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")
    history = _history(row, where) if fmt == "llamafactory" else []
    if fmt == "alpaca" and row.get("history"):
        raise DataError(f"{where}: has a 'history' but format='alpaca' ignores it; use format 'llamafactory' or 'auto'")
    return InstructExample(
        instruction=_text(row, "instruction", where),
        input=_text(row, "input", where, optional=True),
        response=_text(row, "response" if fmt == "gpteacher" else "output", where),
        source=source, index=index, history=history,
    )


def read_instruct_file(path: str | os.PathLike, format: Format = "auto", *,
                       data_root: str | os.PathLike | None = None) -> list[InstructExample]:
    """Read an instruction file (JSON list or JSONL); relative paths resolve against ``data_root``."""
    full = resolve_data_file(path, data_root)
    return [parse_row(row, format, str(full), i, where) for i, (where, row) in enumerate(read_rows(full))]


def load_hub_dataset(hub_id: str, split: str = "train", format: Format = "auto") -> list[InstructExample]:
    """Load a hub dataset with columns instruction, input (optional), output or response, history (optional).

    Needs the optional ``datasets`` package (``pip install datasets``) and network access (or a
    local hub cache).
    """
    try:
        hf_datasets = importlib.import_module("datasets")
    except ImportError as exc:
        raise DataError(
            f"loading the hub dataset {hub_id!r} needs the optional package `datasets`: pip install datasets "
            f"(or point `files:` at local JSON files instead of `hub_id:`)"
        ) from exc
    try:
        ds = hf_datasets.load_dataset(hub_id, split=split)
    except Exception as exc:  # offline, unknown id, unknown split, ...
        raise DataError(
            f"could not load hub dataset {hub_id!r} (split {split!r}): {type(exc).__name__}: {exc}. Check the id and "
            f"split, network access (HF_HUB_OFFLINE), or use local `files:` under the data root instead."
        ) from exc
    columns = set(getattr(ds, "column_names", None) or [])
    if columns and ("instruction" not in columns or not columns & {"output", "response"}):
        raise DataError(
            f"hub dataset {hub_id!r} (split {split!r}) has columns {sorted(columns)}; expected 'instruction', "
            f"optional 'input', and 'output' or 'response'"
        )
    source = f"hub:{hub_id}[{split}]"
    return [parse_row(dict(r), format, source, i, f"{source} row {i}") for i, r in enumerate(ds)]


# -- features ------------------------------------------------------------------------------------
def build_features(
    example: InstructExample,
    receiver_tokenizer: Any,
    sharer_tokenizer: Any,
    aligner: Any,
    *,
    receiver_template: TemplateName = "auto",
    sharer_template: TemplateName = "auto",
    max_prompt_tokens: int = 256,
    max_response_tokens: int = 128,
) -> dict[str, Any] | None:
    """Features of ``example`` (see :mod:`lcf.data.features`), or None when it is filtered out.

    Filtered: a receiver or sharer prompt longer than ``max_prompt_tokens``, or an empty response.
    Responses are truncated to ``max_response_tokens`` (end-of-turn included).
    """
    out = example_features(example, receiver_tokenizer, sharer_tokenizer, aligner,
                           receiver_template=receiver_template, sharer_template=sharer_template,
                           max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens)
    return out if isinstance(out, dict) else None


def example_features(example: InstructExample, *args: Any, **kwargs: Any) -> dict[str, Any] | str:
    """Features of ``example`` (arguments as :func:`build_features`), or the reason it is filtered out;
    an error names the example's source row."""
    try:
        out = featurize(example.messages(), example.response, *args, **kwargs)
    except LCFError as exc:
        exc.add_note(f"while building features for {example.source} row {example.index}")
        raise
    if isinstance(out, dict):
        out.update(source=example.source, index=example.index)
    return out


@datasets.register("instruct_json")
class InstructData:
    """Instruction data from local JSON/JSONL files or a hub dataset, split into train / validation.

    files: paths relative to ``data_root`` (or absolute); exactly one of ``files`` / ``hub_id``.
    hub_id, hub_split: a hub dataset (needs ``pip install datasets``).
    data_root: folder the files are relative to; default ``$LCF_DATA_ROOT``.
    format: row format (see the module docstring); ``auto`` detects it per row.
    max_prompt_tokens: longer prompts (receiver or sharer side) are dropped.
    max_response_tokens: responses are truncated to this many tokens.
    train_size: number of training examples (None: all rows left after validation).
    val_size: number of validation examples, held out first so they do not depend on train_size.
    seed: shuffling seed.
    receiver_template, sharer_template: ``auto`` / ``chat`` / ``plain`` (see ``lcf.align.templates``).
    bucket_by_length: training batches of examples of similar receiver length (less padding); the
        order stays seeded and resumable (``lcf.data.sampling``).
    pad_to_multiple: pad every batch's prompt and response lengths up to a multiple of this (1: no
        extra padding). Fewer distinct shapes, for compiled models or CUDA graphs (``trainer.compile_models``).
    """

    def __init__(
        self,
        files: list[str] | None = None,
        hub_id: str | None = None,
        hub_split: str = "train",
        data_root: str | None = None,
        format: Literal["auto", "alpaca", "gpteacher", "llamafactory"] = "auto",
        max_prompt_tokens: int = 256,
        max_response_tokens: int = 128,
        train_size: int | None = None,
        val_size: int = 64,
        seed: int = 0,
        receiver_template: str = "auto",
        sharer_template: str = "auto",
        bucket_by_length: bool = False,
        pad_to_multiple: int = 1,
    ) -> None:
        self._check_source(files, hub_id)
        if format not in FORMATS:
            raise DataError(f"instruct_json: format must be one of {', '.join(FORMATS)}, got {format!r}")
        for name, value, low in (("max_prompt_tokens", max_prompt_tokens, 1), ("max_response_tokens",
                                 max_response_tokens, 1), ("val_size", val_size, 0)):
            if value < low:
                raise DataError(f"instruct_json: {name} must be >= {low}, got {value}")
        if isinstance(pad_to_multiple, bool) or not isinstance(pad_to_multiple, int) or pad_to_multiple < 1:
            raise DataError(f"instruct_json: pad_to_multiple must be an integer >= 1 (1: no extra padding), "
                            f"got {pad_to_multiple!r}")
        if train_size is not None and train_size < 1:
            raise DataError(f"instruct_json: train_size must be >= 1 or null (all rows), got {train_size}")
        self.files = list(files) if files else None
        self.hub_id, self.hub_split = hub_id, hub_split
        self.data_root = default_data_root(data_root)
        self.format: Format = format
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens
        self.train_size, self.val_size, self.seed = train_size, val_size, seed
        self.receiver_template, self.sharer_template = receiver_template, sharer_template
        self.bucket_by_length = bool(bucket_by_length)  # training batches of similar length (lcf.data.sampling)
        self.pad_to_multiple = pad_to_multiple

    @staticmethod
    def _check_source(files: list[str] | None, hub_id: str | None) -> None:
        if (files is None or len(files) == 0) == (hub_id is None):
            raise DataError(
                "instruct_json: give exactly one of `files` (paths under the data root) or `hub_id` (a hub dataset); "
                f"got files={files!r}, hub_id={hub_id!r}"
            )

    def __repr__(self) -> str:
        what = f"files={self.files!r}, data_root={self.data_root!r}" if self.files else f"hub_id={self.hub_id!r}"
        return f"InstructData({what}, train_size={self.train_size}, val_size={self.val_size}, seed={self.seed})"

    def read(self) -> list[InstructExample]:
        """All rows of all files (in order), or of the hub split."""
        if self.hub_id is not None:
            return load_hub_dataset(self.hub_id, self.hub_split, self.format)
        rows: list[InstructExample] = []
        for f in self.files or []:
            rows += read_instruct_file(f, self.format, data_root=self.data_root)
        return rows

    def prepare(self, receiver_tokenizer: Any, sharer_tokenizer: Any, aligner: Any) -> tuple[list[dict], list[dict]]:
        """Return ``(train_features, val_features)``.

        Rows are shuffled with ``seed``; validation features are built first, from the front of the
        shuffled order, until ``val_size`` are kept; the following rows give training features until
        ``train_size`` are kept (all when None). Filtered rows are skipped and replaced by later ones,
        and features are only built for the rows needed.
        """
        rows = self.read()
        order = list(range(len(rows)))
        random.Random(self.seed).shuffle(order)
        kwargs = dict(receiver_template=self.receiver_template, sharer_template=self.sharer_template,
                      max_prompt_tokens=self.max_prompt_tokens, max_response_tokens=self.max_response_tokens)
        dropped: Counter[str] = Counter()
        splits: tuple[list[dict], list[dict]] = ([], [])  # (val, train)
        wanted = (self.val_size, self.train_size)
        pos = 0
        for split, want in zip(splits, wanted):
            while pos < len(order) and (want is None or len(split) < want):
                out = example_features(rows[order[pos]], receiver_tokenizer, sharer_tokenizer, aligner, **kwargs)
                pos += 1
                if isinstance(out, dict):
                    split.append(out)
                else:
                    dropped[out] += 1
        val, train = splits
        if not train:
            raise DataError(self._empty_message(len(rows), pos, dropped, len(val)))
        if len(val) < self.val_size:
            log.warning("instruct_json: only %d validation examples (val_size=%d)", len(val), self.val_size)
        if dropped:
            log.info("instruct_json: dropped %d of %d examined rows (%s)", sum(dropped.values()), pos,
                     ", ".join(f"{k}: {v}" for k, v in dropped.items()))
        return train, val

    def _empty_message(self, n_rows: int, examined: int, dropped: Counter[str], n_val: int) -> str:
        what = f"hub dataset {self.hub_id!r}" if self.hub_id else f"files {self.files} (data root {self.data_root!r})"
        reasons = ", ".join(f"{v} {k}" for k, v in dropped.items()) or "none"
        msg = (f"instruct_json: no training examples remain from {what}: read {n_rows} rows, built features for "
               f"{examined}, dropped {sum(dropped.values())} ({reasons}), {n_val} went to validation.")
        if dropped[DROP_PROMPT]:
            msg += f" Raise data.max_prompt_tokens (now {self.max_prompt_tokens}) to keep longer prompts."
        if n_rows and n_val >= n_rows - sum(dropped.values()):
            msg += f" Lower data.val_size (now {self.val_size}) to leave rows for training."
        if not n_rows:
            msg += " The data is empty."
        return msg
