"""The shared machinery of cross-context datasets: seeded splits and feature building.

A dataset subclasses :class:`XCData` and implements :meth:`XCData.read` (every
:class:`~lcf.data.xc.features.XCExample`, in a deterministic order) and optionally
:meth:`XCData.group_of` (examples of one group never straddle train and validation, e.g. SQuAD
articles). :meth:`XCData.split_examples` is the seeded split; :meth:`XCData.prepare` builds the
features of both splits with :func:`~lcf.data.xc.features.xc_features`.
"""
from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from typing import Any, ClassVar

from lcf.align.templates import TEMPLATES
from lcf.data.xc.features import DROP_CONTEXT, XCExample, xc_features
from lcf.data.features import DROP_PROMPT
from lcf.data.instruct import default_data_root, resolve_data_file
from lcf.data.rows import DataError, Row, read_rows
from lcf.data.spans import check_scheme
from lcf.errors import suggest

log = logging.getLogger(__name__)

RECEIVER_CONTEXTS: tuple[str, ...] = ("none", "half", "full")

__all__ = ["RECEIVER_CONTEXTS", "XCData", "full_context", "load_rows", "string_list", "text_field"]


def full_context(example: XCExample) -> str:
    """Everything an example's context holds, as the receiver reads it itself: its own part (if any), then the
    sharer's. The receiver prompt of ``receiver_context: full`` and of ``lcf eval-xc``'s ``full`` system."""
    return "\n\n".join(p for p in (example.receiver_context, example.sharer_context) if p)


def load_rows(name: str, file: str, data_root: str | None, hub_id: str | None, hub_config: str | None,
              hub_split: str) -> list[tuple[str, Row]]:
    """``(where, row)`` pairs of ``file`` under the data root, or of the hub dataset when ``hub_id`` is set."""
    if hub_id:
        from lcf.eval.tasks import hub_rows  # lazy: lcf.eval imports lcf.data

        return hub_rows(hub_id, hub_config, hub_split)
    rows = read_rows(resolve_data_file(file, data_root))
    if not rows:
        raise DataError(f"{name}: the data file {file!r} (data root {data_root!r}) holds no rows")
    return rows


def string_list(value: Any, what: str, where: str) -> list[str]:
    """``value`` as a list of strings (a single string becomes a one-element list); else a ``DataError``."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {what} must be a string or a list of strings, got {str(value)[:80]!r}")
    return list(value)


def text_field(row: Row, key: str, where: str) -> str:
    """``row[key]`` as a string; a ``DataError`` naming the row when it is missing or not a string."""
    if key not in row:
        raise DataError(f"{where}: missing key {key!r} (row has keys {sorted(row)})")
    if not isinstance(row[key], str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__} {str(row[key])[:60]!r}")
    return row[key]


class XCData:
    """Base of the cross-context datasets (see the subclasses for the options they take).

    Common options: data_root (default ``$LCF_DATA_ROOT``), val_size (validation examples, held out
    first: whole groups until at least this many), train_size (training features kept; None: all),
    seed, receiver_template / sharer_template (``auto`` / ``chat`` / ``plain``), spans (``paragraph`` /
    ``sentence`` / ``tokens``), span_tokens, max_context_tokens (longer sharer prompts are dropped;
    480 keeps the context inside Gemma-3's 512-token sliding window), max_prompt_tokens (longer
    receiver prompts are dropped), max_response_tokens (answers are truncated), receiver_context
    (``none``: question only; ``half``: the receiver also reads its own part of the context; ``full``: the
    receiver reads the sharer's context too, as ``lcf eval-xc``'s ``full`` system does: the training data of a
    receiver tuned to read the text itself, e.g. ``lcf train-lora``'s own-reading baseline; the split of the
    context between the models is that of ``none``).
    """

    name: ClassVar[str] = "xc"
    supports_half: ClassVar[bool] = False

    def __init__(
        self,
        data_root: str | None = None,
        val_size: int = 100,
        train_size: int | None = None,
        seed: int = 0,
        receiver_template: str = "auto",
        sharer_template: str = "auto",
        spans: str = "paragraph",
        span_tokens: int = 32,
        max_context_tokens: int = 480,
        max_prompt_tokens: int = 1024,
        max_response_tokens: int = 32,
        receiver_context: str = "none",
    ) -> None:
        check_scheme(spans, span_tokens)
        for key, value in (("receiver_template", receiver_template), ("sharer_template", sharer_template)):
            if value not in TEMPLATES:
                raise DataError(f"{self.name}: {key} {value!r} is unknown.{suggest(str(value), TEMPLATES)} "
                                f"Expected one of: {', '.join(TEMPLATES)}.")
        allowed = RECEIVER_CONTEXTS if self.supports_half else ("none", "full")
        if receiver_context not in allowed:
            raise DataError(f"{self.name}: receiver_context must be one of {', '.join(allowed)}, got "
                            f"{receiver_context!r}" + ("" if self.supports_half else
                                                       f" ({self.name} has no second part to give the receiver)"))
        for key, value, low in (("val_size", val_size, 0), ("max_context_tokens", max_context_tokens, 1),
                                ("max_prompt_tokens", max_prompt_tokens, 1),
                                ("max_response_tokens", max_response_tokens, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DataError(f"{self.name}: {key} must be an int >= {low}, got {value!r}")
        if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int)
                                       or train_size < 1):
            raise DataError(f"{self.name}: train_size must be >= 1 or null (all examples), got {train_size!r}")
        self.data_root = default_data_root(data_root)
        self.val_size, self.train_size, self.seed = val_size, train_size, seed
        self.receiver_template, self.sharer_template = receiver_template, sharer_template
        self.spans, self.span_tokens = spans, span_tokens
        self.max_context_tokens, self.max_prompt_tokens = max_context_tokens, max_prompt_tokens
        self.max_response_tokens = max_response_tokens
        self.receiver_context = receiver_context
        self._examples: list[XCExample] | None = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(val_size={self.val_size}, train_size={self.train_size}, seed={self.seed}, "
                f"spans={self.spans!r}, receiver_context={self.receiver_context!r})")

    # -- examples ----------------------------------------------------------------------------------
    def read(self) -> list[XCExample]:
        """Every example, in a deterministic order (subclasses implement it)."""
        raise NotImplementedError

    def group_of(self, example: XCExample) -> str:
        """The split group of ``example``; a group never straddles train and validation."""
        return example.id

    def examples(self) -> list[XCExample]:
        """All examples, in a deterministic order (read once and cached)."""
        if self._examples is None:
            self._examples = self.read()
            if not self._examples:
                raise DataError(f"{self.name}: no examples were read ({self!r})")
        return list(self._examples)

    def split_examples(self) -> tuple[list[XCExample], list[XCExample]]:
        """``(train_examples, val_examples)``: the seeded split that :meth:`prepare` featurizes.

        Groups are shuffled with ``seed``; whole groups go to validation until it holds at least
        ``val_size`` examples (kept in reading order); the other examples, shuffled with ``seed``,
        are the training examples (``train_size`` applies to the features kept from them).
        """
        every = self.examples()
        groups: dict[str, list[int]] = {}
        for i, ex in enumerate(every):
            groups.setdefault(self.group_of(ex), []).append(i)
        keys = list(groups)
        rng = random.Random(self.seed)
        rng.shuffle(keys)
        val_idx: list[int] = []
        train_idx: list[int] = []
        for key in keys:
            (val_idx if len(val_idx) < self.val_size else train_idx).extend(groups[key])
        rng.shuffle(train_idx)
        return [every[i] for i in train_idx], [every[i] for i in sorted(val_idx)]

    # -- features ----------------------------------------------------------------------------------
    def feature_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~lcf.data.xc.features.xc_features` this dataset uses."""
        return dict(receiver_template=self.receiver_template, sharer_template=self.sharer_template,
                    spans=self.spans, span_tokens=self.span_tokens, max_context_tokens=self.max_context_tokens,
                    max_prompt_tokens=self.max_prompt_tokens, max_response_tokens=self.max_response_tokens)

    def prepare(self, receiver_tokenizer: Any, sharer_tokenizer: Any,
                aligner: Any = None) -> tuple[list[dict], list[dict]]:
        """Return ``(train_features, val_features)`` of :meth:`split_examples` (``aligner`` is unused:
        the alignment of cross-context features is trivial).

        Validation features are built first from every validation example; training features from
        the training examples until ``train_size`` are kept. Examples that are too long (or have an
        empty answer) are dropped and counted; an error explains what happened when no training
        example remains.
        """
        train_ex, val_ex = self.split_examples()
        index = {id(ex): i for i, ex in enumerate(self.examples())}
        kwargs = self.feature_kwargs()
        dropped: Counter[str] = Counter()
        val: list[dict] = []
        train: list[dict] = []
        examined = 0
        for split, todo, want in ((val, val_ex, None), (train, train_ex, self.train_size)):
            for ex in todo:
                if want is not None and len(split) >= want:
                    break
                at = index.get(id(ex), -1)
                if self.receiver_context == "full":  # the receiver reads the context itself
                    ex = dataclasses.replace(ex, receiver_context=full_context(ex))
                out = xc_features(ex, receiver_tokenizer, sharer_tokenizer, index=at, **kwargs)
                examined += 1
                if isinstance(out, dict):
                    split.append(out)
                else:
                    dropped[out] += 1
        if not train:
            raise DataError(self._empty_message(len(self._examples or []), examined, dropped, len(val_ex)))
        if len(val) < min(self.val_size, len(val_ex)):
            log.warning("%s: %d of %d validation examples kept (val_size=%d)", self.name, len(val), len(val_ex),
                        self.val_size)
        if dropped:
            log.info("%s: dropped %d of %d examined examples (%s)", self.name, sum(dropped.values()), examined,
                     ", ".join(f"{k}: {v}" for k, v in dropped.items()))
        return train, val

    def _empty_message(self, n: int, examined: int, dropped: Counter[str], n_val: int) -> str:
        reasons = ", ".join(f"{v} {k}" for k, v in dropped.items()) or "none"
        msg = (f"{self.name}: no training examples remain ({self!r}): {n} examples, {n_val} held out for validation, "
               f"built features for {examined}, dropped {sum(dropped.values())} ({reasons}).")
        if dropped[DROP_CONTEXT]:
            msg += (f" Contexts longer than data.max_context_tokens (now {self.max_context_tokens}) are dropped; raise "
                    f"it if the sharer can attend that far, or use shorter contexts.")
        if dropped[DROP_PROMPT]:
            msg += f" Raise data.max_prompt_tokens (now {self.max_prompt_tokens}) to keep longer receiver prompts."
        if n and n_val >= n:
            msg += f" Every example went to validation: lower data.val_size (now {self.val_size})."
        return msg
