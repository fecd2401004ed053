"""Evaluation tasks: benchmark files (or hub datasets) turned into multiple-choice / QA items.

    task = load_task("arc_easy", data_root="/path/to/data", limit=100)
    for item in task.items():
        text = task.prompt(item)                 # zero-shot user message
        options = task.option_texts(item)        # " " + choice, scored by log-likelihood

Files are relative to a data root: the ``data_root`` argument, else ``$LCF_DATA_ROOT`` (see
:func:`lcf.data.instruct.resolve_data_file`). ``hub_id=`` (with optional ``hub_config=``) reads
the benchmark's hub dataset instead, which needs the optional ``datasets`` package.

| task | kind | metric | splits (default first) |
|---|---|---|---|
| arc_easy | mc | accuracy | validation, test, train |
| arc_challenge | mc | accuracy | validation, train |
| openbookqa | mc | accuracy | validation, train |
| sciq | mc | accuracy | train (support paragraph + question, as lm-eval's ``sciq``) |
| mmlu | mc | accuracy | validation, test, dev |
| mmlu_redux | mc | accuracy | test (``error_type == "ok"`` rows unless ``all_rows=True``) |
| squad | qa | em_f1 | validation |
| hotpotqa | qa | em_f1 | validation |
| gsm8k | qa | exact_match (on :func:`lcf.eval.metrics.gsm8k_number`) | test, train |
"""
from __future__ import annotations

import importlib
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from lcf.data.instruct import DataFileNotFoundError, default_data_root, resolve_data_file
from lcf.data.rows import DataError, Row, read_rows
from lcf.errors import suggest
from lcf.eval.metrics import gsm8k_number
from lcf.registry import tasks

__all__ = ["DataError", "DataFileNotFoundError", "MCItem", "QAItem", "Task", "load_task", "read_rows"]

LETTERS = string.ascii_uppercase


@dataclass
class MCItem:
    """A multiple-choice question; ``answer`` indexes the gold entry of ``choices`` / ``labels``."""

    id: str
    question: str
    choices: list[str]
    labels: list[str]
    answer: int
    subject: str = ""
    context: str = ""  # a passage that goes before the question (SciQ's support)


@dataclass
class QAItem:
    """A generative question; a prediction is right when it matches any of ``answers``."""

    id: str
    question: str
    context: str
    answers: list[str]


Item = Union[MCItem, QAItem]


# -- reading rows ---------------------------------------------------------------------------------
def hub_rows(hub_id: str, config: str | None, split: str) -> list[tuple[str, Row]]:
    """Rows of a hub dataset via the optional ``datasets`` package (clear errors when missing/offline)."""
    try:
        hf = importlib.import_module("datasets")
    except ImportError as exc:
        raise DataError(
            f"loading the hub dataset {hub_id!r} needs the optional package `datasets`: pip install datasets "
            f"(or leave hub_id unset to read the local files under the data root)"
        ) from exc
    try:
        ds = hf.load_dataset(hub_id, config, split=split) if config else hf.load_dataset(hub_id, split=split)
    except Exception as exc:  # offline, unknown id / config / split, ...
        raise DataError(
            f"could not load hub dataset {hub_id!r} (config {config!r}, split {split!r}): {type(exc).__name__}: "
            f"{exc}. Check the id, hub_config and split, network access (HF_HUB_OFFLINE), or use the local files."
        ) from exc
    source = f"hub:{hub_id}" + (f"/{config}" if config else "") + f"[{split}]"
    return [(f"{source} row {i}", dict(r)) for i, r in enumerate(ds)]


def _get(row: Row, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in row:
        raise DataError(f"{where}: missing key {key!r} (row has keys {sorted(row)})")
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: {key!r} must be {want}, got {type(value).__name__} {str(value)[:60]!r}")
    return value


def _strings(value: Any, what: str, where: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {what} must be a list of strings, got {str(value)[:80]!r}")
    return list(value)


def _mc(where: str, id: str, question: str, choices: Any, answer: Any, raw_labels: Any = None,
        subject: str = "") -> MCItem:
    """Validate and normalise one multiple-choice row: labels become "A", "B", ...; answer an index."""
    texts = _strings(choices, "the choices", where)
    if not 2 <= len(texts) <= len(LETTERS):
        raise DataError(f"{where}: expected 2..{len(LETTERS)} choices, got {len(texts)}")
    labels = list(LETTERS[: len(texts)])
    if raw_labels is not None:
        raw = [str(r) for r in _strings(raw_labels, "the choice labels", where)]
        if len(raw) != len(texts):
            raise DataError(f"{where}: {len(texts)} choice texts but {len(raw)} labels {raw}")
    else:
        raw = labels
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise DataError(f"{where}: the answer must be an index or a label, got {answer!r}")
    if isinstance(answer, str):
        key = answer.strip()
        if key in raw:
            answer = raw.index(key)
        elif key in labels:
            answer = labels.index(key)
        elif key.isdigit() and raw_labels is None:
            answer = int(key)
        else:
            raise DataError(f"{where}: answer key {answer!r} is not one of the choice labels {raw}")
    if not 0 <= answer < len(texts):
        raise DataError(f"{where}: answer index {answer} out of range for {len(texts)} choices")
    return MCItem(id=id, question=question, choices=texts, labels=labels, answer=answer, subject=subject)


# -- tasks ----------------------------------------------------------------------------------------
class Task:
    """A benchmark: ``items()`` (optionally a seeded sample of ``limit``), prompts and scored options.

    data_root: folder the benchmark files are relative to; default ``$LCF_DATA_ROOT``.
    split: one of ``splits`` (default ``default_split``); with ``hub_id`` any split the hub has.
    limit: evaluate a seeded random sample of this many items (kept in file order); None: all.
    seed: sampling seed.
    hub_id, hub_config: read the hub dataset (HF schema of the benchmark) instead of local files.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Literal["mc", "qa"]] = "mc"
    metric: ClassVar[str] = "accuracy"
    splits: ClassVar[dict[str, str]] = {}
    default_split: ClassVar[str] = "validation"
    hub_configs: ClassVar[dict[str, str]] = {}  # default hub_config for well-known hub ids

    def __init__(self, data_root: str | None = None, split: str | None = None, limit: int | None = None,
                 seed: int = 0, hub_id: str | None = None, hub_config: str | None = None,
                 **task_specific: Any) -> None:
        if task_specific:
            key = sorted(task_specific)[0]
            accepted = ["data_root", "split", "limit", "seed", "hub_id", "hub_config", *self.options()]
            raise DataError(f"task {self.name!r} has no option {key!r}.{suggest(key, accepted)} "
                            f"Accepted: {', '.join(accepted)}.")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise DataError(f"task {self.name!r}: limit must be >= 1 (or None for all items), got {limit!r}")
        self.data_root = default_data_root(data_root)
        self.split = split or self.default_split
        self.limit, self.seed = limit, seed
        self.hub_id, self.hub_config = hub_id, hub_config or self.hub_configs.get(hub_id or "")
        self.path: Path | None = None
        if hub_id is None:
            if self.split not in self.splits:
                raise DataError(f"task {self.name!r}: unknown split {self.split!r}.{suggest(self.split, self.splits)} "
                                f"Available splits: {', '.join(self.splits)}.")
            self.path = resolve_data_file(self.splits[self.split], data_root)
        self._all: list[Item] | None = None

    @classmethod
    def options(cls) -> list[str]:
        """Names of task-specific options (beyond the common ones)."""
        return []

    def __repr__(self) -> str:
        src = f"hub_id={self.hub_id!r}" if self.hub_id else f"path={str(self.path)!r}"
        return f"{type(self).__name__}(split={self.split!r}, limit={self.limit}, seed={self.seed}, {src})"

    @property
    def source(self) -> str:
        """Where the items come from (file path or hub id)."""
        return str(self.path) if self.path else f"hub:{self.hub_id}"
    def all_items(self) -> list[Item]:
        """Every item of the split (after task filters), in file order; read once and cached."""
        if self._all is None:
            rows = read_rows(self.path) if self.path else hub_rows(self.hub_id or "", self.hub_config, self.split)
            parsed = (self.parse(row, where, i) for i, (where, row) in enumerate(rows))
            self._all = [item for item in parsed if item is not None]
            if not self._all:
                raise DataError(f"task {self.name!r}: no items in {self.source} (split {self.split!r})")
        return self._all

    def items(self) -> list[Item]:
        """The items to evaluate: all, or a ``seed``-ed random sample of ``limit`` kept in file order."""
        every = self.all_items()
        if self.limit is None or self.limit >= len(every):
            return list(every)
        keep = sorted(random.Random(self.seed).sample(range(len(every)), self.limit))
        return [every[i] for i in keep]

    def parse(self, row: Row, where: str, index: int) -> Item | None:
        """Turn one row into an item (None drops it); ``where`` (file + line) prefixes errors."""
        raise NotImplementedError

    def _id(self, row: Row, index: int, key: str = "id") -> str:
        value = row.get(key)
        return str(value) if value not in (None, "") else f"{self.name}/{self.split}/{index}"

    def prompt(self, item: Item) -> str:
        """The zero-shot user message for ``item``."""
        if isinstance(item, MCItem):
            lines = [item.question.strip(), *(f"{l}. {c}" for l, c in zip(item.labels, item.choices)), "Answer:"]
            if item.context.strip():
                lines.insert(0, item.context.strip() + "\n")
            return "\n".join(lines)
        head = f"{item.context.strip()}\n\n" if item.context.strip() else ""
        return f"{head}Question: {item.question.strip()}\nAnswer with a short phrase."

    def cloze_prompt(self, item: MCItem) -> str:
        """lm-evaluation-harness's context for ``item`` (raw text, no options listed): ARC's
        ``"Question: {q}\nAnswer:"``; tasks whose lm-eval prompt differs override it."""
        return f"Question: {item.question}\nAnswer:"

    def option_texts(self, item: MCItem) -> list[str]:
        """Continuations scored by log-likelihood: ``" " + choice``."""
        return [" " + c for c in item.choices]

    def letter_texts(self, item: MCItem) -> list[str]:
        """Continuations for scoring by letter: ``" A"``, ``" B"``, ..."""
        return [" " + l for l in item.labels]


@tasks.register("arc_easy")
class ArcEasy(Task):
    """AI2 ARC, easy set (HF ``allenai/ai2_arc`` schema); numeric labels "1".."4" become letters."""

    name = "arc_easy"
    splits = {"validation": "arc/ARC-Easy-validation.jsonl", "test": "arc/ARC-Easy-test.jsonl",
              "train": "arc/ARC-Easy-train.jsonl"}
    hub_configs = {"allenai/ai2_arc": "ARC-Easy", "ai2_arc": "ARC-Easy"}
    question_key: ClassVar[str] = "question"

    def parse(self, row: Row, where: str, index: int) -> MCItem:
        choices = _get(row, "choices", where, dict)
        if "text" not in choices or "label" not in choices:
            raise DataError(f"{where}: 'choices' must have 'text' and 'label' lists, got keys {sorted(choices)}")
        return _mc(where, self._id(row, index), _get(row, self.question_key, where), choices["text"],
                   _get(row, "answerKey", where), raw_labels=choices["label"])


@tasks.register("arc_challenge")
class ArcChallenge(ArcEasy):
    """AI2 ARC, challenge set."""

    name = "arc_challenge"
    splits = {"validation": "arc/ARC-Challenge-validation.jsonl", "train": "arc/ARC-Challenge-train.jsonl"}
    hub_configs = {"allenai/ai2_arc": "ARC-Challenge", "ai2_arc": "ARC-Challenge"}


@tasks.register("openbookqa")
class OpenBookQA(ArcEasy):
    """OpenBookQA main (HF ``allenai/openbookqa`` schema: ``question_stem``, choices, answerKey)."""

    name = "openbookqa"
    splits = {"validation": "openbookqa/openbookqa-main-validation.jsonl",
              "train": "openbookqa/openbookqa-main-train.jsonl"}
    hub_configs = {"allenai/openbookqa": "main", "openbookqa": "main"}
    question_key = "question_stem"

    def cloze_prompt(self, item: MCItem) -> str:
        """lm-eval's ``openbookqa`` context: the question stem alone."""
        return item.question


@tasks.register("sciq")
class SciQ(Task):
    """SciQ (HF ``allenai/sciq`` schema: question, distractor1-3, correct_answer, support). As in
    lm-eval's ``sciq`` task, the options are ``[distractor1, distractor2, distractor3, correct_answer]``
    (gold last) and the cloze prompt puts the support paragraph before the question."""

    name = "sciq"
    splits = {"train": "sciq/sciq-train.jsonl"}
    default_split = "train"

    def parse(self, row: Row, where: str, index: int) -> MCItem:
        options = [_get(row, k, where) for k in ("distractor1", "distractor2", "distractor3", "correct_answer")]
        item = _mc(where, self._id(row, index), _get(row, "question", where), options, 3)
        item.context = str(row.get("support") or "")
        return item

    def cloze_prompt(self, item: MCItem) -> str:
        """lm-eval's ``sciq`` context: ``"{support}\nQuestion: {question}\nAnswer:"``."""
        return f"{item.context.lstrip()}\nQuestion: {item.question}\nAnswer:"


@tasks.register("mmlu")
class MMLU(Task):
    """MMLU (HF ``cais/mmlu`` schema: subject, question, choices, answer index)."""

    name = "mmlu"
    splits = {"validation": "mmlu/mmlu_validation.jsonl", "test": "mmlu/mmlu_test.jsonl",
              "dev": "mmlu/mmlu_dev.jsonl"}
    hub_configs = {"cais/mmlu": "all"}

    def parse(self, row: Row, where: str, index: int) -> MCItem | None:
        subject = row.get("subject") or self.hub_config or ""
        if not isinstance(subject, str):
            raise DataError(f"{where}: 'subject' must be a string, got {subject!r}")
        return _mc(where, self._id(row, index), _get(row, "question", where), _get(row, "choices", where, list),
                   _get(row, "answer", where, (int, str)), subject=subject)


@tasks.register("mmlu_redux")
class MMLURedux(MMLU):
    """MMLU-Redux: MMLU test questions re-annotated; by default only rows with ``error_type == "ok"``.

    all_rows: keep every row, including questions annotated as erroneous (gold answer unchanged).
    """

    name = "mmlu_redux"
    splits = {"test": "mmlu_redux/mmlu_redux.jsonl"}
    default_split = "test"

    def __init__(self, *args: Any, all_rows: bool = False, **kwargs: Any) -> None:
        self.all_rows = bool(all_rows)
        super().__init__(*args, **kwargs)

    @classmethod
    def options(cls) -> list[str]:
        return ["all_rows"]

    def parse(self, row: Row, where: str, index: int) -> MCItem | None:
        if _get(row, "error_type", where) != "ok" and not self.all_rows:
            return None
        return super().parse(row, where, index)


@tasks.register("squad")
class SQuAD(Task):
    """SQuAD v1.1 (HF ``rajpurkar/squad`` schema: id, context, question, answers{text, ...})."""

    name = "squad"
    kind = "qa"
    metric = "em_f1"
    splits = {"validation": "squad/squad_v1.1_dev_sample_dev.jsonl"}

    def parse(self, row: Row, where: str, index: int) -> QAItem:
        answers = _get(row, "answers", where, dict)
        golds = list(dict.fromkeys(_strings(answers.get("text"), "answers['text']", where)))
        if not golds:
            raise DataError(f"{where}: no gold answers in answers['text']")
        return QAItem(id=self._id(row, index), question=_get(row, "question", where),
                      context=_get(row, "context", where), answers=golds)


@tasks.register("hotpotqa")
class HotpotQA(Task):
    """HotpotQA distractor (official JSON, or HF ``hotpotqa/hotpot_qa``); context = "title: text" paragraphs."""

    name = "hotpotqa"
    kind = "qa"
    metric = "em_f1"
    splits = {"validation": "hotpotqa/hotpot_dev_distractor_v1.first100.json"}
    hub_configs = {"hotpotqa/hotpot_qa": "distractor", "hotpot_qa": "distractor"}

    def parse(self, row: Row, where: str, index: int) -> QAItem:
        ctx = _get(row, "context", where, (list, dict))
        if isinstance(ctx, dict):  # hub schema: {"title": [...], "sentences": [[...], ...]}
            pairs = list(zip(ctx.get("title") or [], ctx.get("sentences") or []))
        else:  # official schema: [[title, [sentences]], ...]
            if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in ctx):
                raise DataError(f"{where}: 'context' must be a list of [title, [sentences]] pairs")
            pairs = [(p[0], p[1]) for p in ctx]
        paragraphs = []
        for title, sents in pairs:
            text = "".join(_strings(sents, f"the sentences of paragraph {title!r}", where)).strip()
            paragraphs.append(f"{title}: {text}")
        return QAItem(id=self._id(row, index, "_id" if "_id" in row else "id"), question=_get(row, "question", where),
                      context="\n\n".join(paragraphs), answers=[_get(row, "answer", where)])


@tasks.register("gsm8k")
class GSM8K(Task):
    """GSM8K (question, answer ending in ``#### n``); the gold is ``n``, compared with the last number
    of the generation (:func:`lcf.eval.metrics.gsm8k_number`)."""

    name = "gsm8k"
    kind = "qa"
    metric = "exact_match"
    splits = {"test": "gsm8k/test.jsonl", "train": "gsm8k/train.jsonl"}
    default_split = "test"
    hub_configs = {"openai/gsm8k": "main", "gsm8k": "main"}

    def parse(self, row: Row, where: str, index: int) -> QAItem:
        solution = _get(row, "answer", where)
        number = gsm8k_number(solution.rpartition("####")[2]) if "####" in solution else None
        if number is None:
            raise DataError(f"{where}: 'answer' must end with '#### <number>', got {solution[-60:]!r}")
        return QAItem(id=self._id(row, index), question=_get(row, "question", where), context="", answers=[number])

    def prompt(self, item: Item) -> str:
        return (f"Question: {item.question.strip()}\nSolve the problem step by step, then give the final answer "
                f"as a number on the last line.")


def load_task(name: str, **kwargs: Any) -> Task:
    """Build the registered task ``name`` (unknown names raise with close matches and all names)."""
    return tasks.get(name)(**kwargs)
