"""Chat-format instruction data: OpenHermes-2.5 and other conversation datasets, streamed from the hub.

Each row holds one conversation, a list of turns under ``conversations`` (ShareGPT style: ``{"from":
"system" | "human" | "gpt", "value": ...}``, the layout of ``teknium/OpenHermes-2.5``) or ``messages``
(``{"role": "system" | "user" | "assistant", "content": ...}``). The LAST assistant turn is the response
the receiver learns; the turns before it are the prompt (system turns included). Features are built by
:func:`lcf.data.features.featurize`, exactly as for ``instruct_json``: the same receiver/sharer chat
templates, the same token alignment, the loss on the response tokens (and the end-of-turn) only.

The registered component ``chat_hub`` (:class:`ChatHubData`) reads a hub dataset through the optional
``datasets`` package (imported only when a hub dataset is read), by default as a stream: rows are
shuffled in a seeded buffer and only as many are featurized as ``val_size`` + ``train_size`` need, so a
500k-sample subset of a 1M-row dataset never downloads or tokenizes the rest. ``files:`` reads local
JSON/JSONL files with the same row layout instead (a copy of the data, or a test stand-in).

``max_length`` caps receiver prompt + response tokens as C2C's training length does (arXiv 2510.03215:
2048): prompts that leave no room for a response token are dropped, responses are cut to fit.
"""
from __future__ import annotations

import importlib
import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from lcf.data.features import DROP_EMPTY, DROP_PROMPT, featurize
from lcf.data.instruct import default_data_root, resolve_data_file
from lcf.data.rows import DataError, Row, read_rows
from lcf.errors import LCFError
from lcf.registry import datasets

log = logging.getLogger(__name__)

__all__ = ["ChatExample", "ChatHubData", "parse_conversation", "ROLE_ALIASES"]

#: Role names found in chat datasets -> the roles of lcf's templates.
ROLE_ALIASES: dict[str, str] = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "model": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
}
TURN_KEYS = ("conversations", "messages")
DROP_NO_RESPONSE = "no assistant turn"
DROP_NO_USER = "no user turn before the response"
DROP_ROLE = "a turn with an unknown role"
DROP_LENGTH = "prompt leaves no room for the response within max_length"


@dataclass
class ChatExample:
    """One conversation: the prompt ``messages`` (role/content dicts) and the final assistant ``response``."""

    messages: list[dict[str, str]]
    response: str
    source: str
    index: int


def _turn(turn: Any, where: str, k: int) -> tuple[str, str]:
    """``(raw role, content)`` of one turn in either layout."""
    if not isinstance(turn, dict):
        raise DataError(f"{where}: turn {k} must be an object with from/value or role/content, got "
                        f"{type(turn).__name__} {str(turn)[:60]!r}")
    role_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
    if role_key not in turn or text_key not in turn:
        raise DataError(f"{where}: turn {k} has keys {sorted(turn)}; expected 'from' and 'value' (ShareGPT, "
                        f"OpenHermes) or 'role' and 'content' (OpenAI messages)")
    role, text = turn[role_key], turn[text_key]
    if not isinstance(role, str) or not isinstance(text, str):
        raise DataError(f"{where}: turn {k}: {role_key!r} and {text_key!r} must be strings, got "
                        f"{type(role).__name__} and {type(text).__name__}")
    return role, text


def parse_conversation(row: Row, where: str, index: int, messages_key: str | None = None) -> ChatExample | str:
    """The example of one row, or the reason it is skipped (no assistant turn, no user turn before it,
    a role outside :data:`ROLE_ALIASES`). A row without a turn list is an error: the layout is wrong."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object holding a list of turns, got {type(row).__name__}")
    key = messages_key or next((k for k in TURN_KEYS if k in row), None)
    turns = row.get(key) if key else None
    if not isinstance(turns, list):
        found = f"key {key!r} holds {type(turns).__name__}" if key in row else f"keys {sorted(row)}"
        raise DataError(f"{where}: expected a list of turns under {key or ' or '.join(map(repr, TURN_KEYS))}, found "
                        f"{found}; set data.messages_key to the column that holds the conversation")
    roles: list[str] = []
    texts: list[str] = []
    for k, turn in enumerate(turns):
        raw, text = _turn(turn, where, k)
        role = ROLE_ALIASES.get(raw.strip().lower())
        if role is None:
            return DROP_ROLE
        roles.append(role)
        texts.append(text)
    if "assistant" not in roles:
        return DROP_NO_RESPONSE
    last = len(roles) - 1 - roles[::-1].index("assistant")
    if "user" not in roles[:last]:
        return DROP_NO_USER
    messages = [{"role": r, "content": t} for r, t in zip(roles[:last], texts[:last])]
    return ChatExample(messages=messages, response=texts[last], source=where, index=index)


def _compact(feature: dict[str, Any]) -> dict[str, Any]:
    """Token lists as int32 / bool numpy arrays: about a tenth of the memory of Python lists, which matters
    at 500k examples per process. :func:`lcf.data.features.collate` takes either."""
    import numpy as np

    out = dict(feature)
    for key in ("receiver_prompt_ids", "sharer_prompt_ids", "align_index", "response_ids"):
        out[key] = np.asarray(feature[key], dtype=np.int32)
    out["align_mask"] = np.asarray(feature["align_mask"], dtype=bool)
    return out


@datasets.register("chat_hub")
class ChatHubData:
    """Chat-format instruction data from a hub dataset (streamed) or local files, split into train / validation.

    hub_id, hub_config, hub_split: the hub dataset (e.g. ``teknium/OpenHermes-2.5``); needs ``pip install
        datasets`` and the hub (or its local cache). Exactly one of ``hub_id`` / ``files``.
    files: JSON/JSONL files of the same row layout, relative to ``data_root`` (default ``$LCF_DATA_ROOT``).
    streaming: read the hub dataset as a stream (no full download); ``shuffle_buffer`` rows are shuffled
        with ``seed`` as they stream (0: hub order). Without streaming the whole split is shuffled.
    messages_key: the column holding the turns (default: ``conversations`` or ``messages``, whichever a row has).
    max_length: receiver prompt + response tokens at most (None: no cap); longer responses are cut.
    max_prompt_tokens: longer prompts (receiver or sharer side) are dropped (default: ``max_length - 1``).
    max_response_tokens: responses are cut to this many tokens (end-of-turn included).
    train_size, val_size: examples kept for training (None: every row left) and validation (held out first).
    receiver_template, sharer_template, bucket_by_length, pad_to_multiple: as for ``instruct_json``.
    compact: keep token lists as numpy arrays (about a tenth of the memory: use it at paper scale; not with a
        ``sharers:`` list, whose features are compared as lists).
    """

    def __init__(
        self,
        hub_id: str | None = None,
        hub_config: str | None = None,
        hub_split: str = "train",
        files: list[str] | None = None,
        data_root: str | None = None,
        streaming: bool = True,
        shuffle_buffer: int = 10_000,
        messages_key: str | None = None,
        max_length: int | None = None,
        max_prompt_tokens: int | None = None,
        max_response_tokens: int = 2048,
        train_size: int | None = None,
        val_size: int = 64,
        seed: int = 0,
        receiver_template: str = "auto",
        sharer_template: str = "auto",
        bucket_by_length: bool = False,
        pad_to_multiple: int = 1,
        compact: bool = False,
    ) -> None:
        if (not files) == (hub_id is None):
            raise DataError("chat_hub: give exactly one of `hub_id` (a hub dataset, e.g. teknium/OpenHermes-2.5) or "
                            f"`files` (JSON/JSONL files under the data root); got hub_id={hub_id!r}, files={files!r}")
        for name, value, low in (("max_length", max_length, 2), ("max_prompt_tokens", max_prompt_tokens, 1),
                                 ("max_response_tokens", max_response_tokens, 1), ("train_size", train_size, 1),
                                 ("val_size", val_size, 0), ("shuffle_buffer", shuffle_buffer, 0),
                                 ("pad_to_multiple", pad_to_multiple, 1)):
            if value is None and name in ("max_length", "max_prompt_tokens", "train_size"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DataError(f"chat_hub: {name} must be an integer >= {low}, got {value!r}")
        if max_prompt_tokens is None:
            max_prompt_tokens = max_length - 1 if max_length is not None else 256
        self.hub_id, self.hub_config, self.hub_split = hub_id, hub_config, hub_split
        self.files = list(files) if files else None
        self.data_root = default_data_root(data_root)
        self.streaming, self.shuffle_buffer, self.messages_key = bool(streaming), shuffle_buffer, messages_key
        self.max_length, self.max_prompt_tokens = max_length, max_prompt_tokens
        self.max_response_tokens = max_response_tokens
        self.train_size, self.val_size, self.seed = train_size, val_size, seed
        self.receiver_template, self.sharer_template = receiver_template, sharer_template
        self.bucket_by_length, self.pad_to_multiple = bool(bucket_by_length), pad_to_multiple
        self.compact = bool(compact)

    def __repr__(self) -> str:
        what = f"hub_id={self.hub_id!r}" if self.hub_id else f"files={self.files!r}, data_root={self.data_root!r}"
        return f"ChatHubData({what}, train_size={self.train_size}, val_size={self.val_size}, seed={self.seed})"

    # -- rows ------------------------------------------------------------------------------------
    def rows(self) -> Iterator[tuple[str, Row]]:
        """``(where, row)`` in the seeded order examples are taken in: local files shuffled whole, hub rows
        through the ``datasets`` shuffle (a buffer when streaming)."""
        if self.files:
            rows: list[tuple[str, Row]] = []
            for f in self.files:
                rows += read_rows(resolve_data_file(f, self.data_root))
            random.Random(self.seed).shuffle(rows)
            return iter(rows)
        return self._hub_rows()

    def _hub_rows(self) -> Iterator[tuple[str, Row]]:
        try:
            hf = importlib.import_module("datasets")
        except ImportError as exc:
            raise DataError(f"chat_hub: reading the hub dataset {self.hub_id!r} needs the optional package "
                            f"`datasets`: pip install datasets (or give `files:` with a local copy)") from exc
        args = (self.hub_id, self.hub_config) if self.hub_config else (self.hub_id,)
        try:
            ds = hf.load_dataset(*args, split=self.hub_split, streaming=self.streaming)
            if self.streaming and self.shuffle_buffer:
                ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            elif not self.streaming:
                ds = ds.shuffle(seed=self.seed)
        except Exception as exc:  # offline, unknown id / config / split ...
            raise DataError(
                f"chat_hub: could not open hub dataset {self.hub_id!r} (config {self.hub_config!r}, split "
                f"{self.hub_split!r}): {type(exc).__name__}: {exc}. Check the id and split and the network (or "
                f"HF_HUB_OFFLINE with a populated cache), or give `files:` with a local copy."
            ) from exc
        source = f"hub:{self.hub_id}[{self.hub_split}]"
        return ((f"{source} row {i}", dict(r)) for i, r in enumerate(ds))

    # -- features --------------------------------------------------------------------------------
    def build(self, example: ChatExample, receiver_tokenizer: Any, sharer_tokenizer: Any, aligner: Any) -> dict | str:
        """Features of one example (``instruct_json``'s), or why it is dropped."""
        try:
            out = featurize(example.messages, example.response, receiver_tokenizer, sharer_tokenizer, aligner,
                            receiver_template=self.receiver_template, sharer_template=self.sharer_template,
                            max_prompt_tokens=self.max_prompt_tokens, max_response_tokens=self.max_response_tokens)
        except LCFError as exc:
            exc.add_note(f"while building features for {example.source}")
            raise
        if not isinstance(out, dict):
            return out
        if self.max_length is not None:
            room = self.max_length - len(out["receiver_prompt_ids"])
            if room < 1:
                return DROP_LENGTH
            out["response_ids"] = out["response_ids"][:room]
        out.update(source=example.source, index=example.index)
        return _compact(out) if self.compact else out

    def prepare(self, receiver_tokenizer: Any, sharer_tokenizer: Any, aligner: Any) -> tuple[list[dict], list[dict]]:
        """``(train_features, val_features)``: validation first, then training, from the seeded row order;
        skipped rows are replaced by later ones and reading stops once both are full."""
        return self.take(self.rows(), receiver_tokenizer, sharer_tokenizer, aligner)

    def take(self, rows: Iterable[tuple[str, Row]], receiver_tokenizer: Any, sharer_tokenizer: Any,
             aligner: Any) -> tuple[list[dict], list[dict]]:
        """:meth:`prepare` over the given ``(where, row)`` pairs."""
        val: list[dict] = []
        train: list[dict] = []
        dropped: Counter[str] = Counter()
        seen = 0
        for index, (where, row) in enumerate(rows):
            if len(val) >= self.val_size and self.train_size is not None and len(train) >= self.train_size:
                break
            seen += 1
            example = parse_conversation(row, where, index, self.messages_key)
            out = example if isinstance(example, str) else self.build(example, receiver_tokenizer, sharer_tokenizer,
                                                                      aligner)
            if isinstance(out, str):
                dropped[out] += 1
            else:
                (val if len(val) < self.val_size else train).append(out)
            if seen % 50_000 == 0:
                log.info("chat_hub: %d rows read, %d train / %d val examples", seen, len(train), len(val))
        if not train:
            raise DataError(self._empty_message(seen, dropped, len(val)))
        if self.train_size is not None and len(train) < self.train_size:
            log.warning("chat_hub: only %d training examples (train_size=%d): the data ran out after %d rows",
                        len(train), self.train_size, seen)
        if dropped:
            log.info("chat_hub: skipped %d of %d rows (%s)", sum(dropped.values()), seen,
                     ", ".join(f"{k}: {v}" for k, v in dropped.items()))
        return train, val

    def _empty_message(self, seen: int, dropped: Counter[str], n_val: int) -> str:
        what = f"hub dataset {self.hub_id!r}" if self.hub_id else f"files {self.files} (data root {self.data_root!r})"
        reasons = ", ".join(f"{v} {k}" for k, v in dropped.items()) or "none"
        msg = (f"chat_hub: no training examples remain from {what}: read {seen} rows, skipped "
               f"{sum(dropped.values())} ({reasons}), {n_val} went to validation.")
        if dropped[DROP_PROMPT] or dropped[DROP_LENGTH]:
            msg += (f" Raise data.max_prompt_tokens (now {self.max_prompt_tokens}) / data.max_length (now "
                    f"{self.max_length}) to keep longer prompts.")
        if dropped[DROP_ROLE] or dropped[DROP_NO_RESPONSE]:
            msg += f" Turn roles must be among {', '.join(sorted(ROLE_ALIASES))} and include an assistant turn."
        if n_val and n_val >= seen - sum(dropped.values()):
            msg += f" Lower data.val_size (now {self.val_size}) to leave rows for training."
        if dropped[DROP_EMPTY] == seen and seen:
            msg += " Every response is empty."
        return msg
