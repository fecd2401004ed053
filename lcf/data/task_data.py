"""Training data from evaluation tasks: each item of a registered ``lcf.eval`` task becomes an
instruction example, so an adapter can be trained on one split of a benchmark and evaluated on another.

    data: {type: eval_task, task: arc_easy, split: test, val_size: 64}

``format: prompt`` (default) renders items exactly as ``lcf eval``'s chat format prompts them (question,
lettered options, ``Answer:``) and answers with the correct option's text (or, with ``answer: letter``,
its letter). ``format: cloze`` renders them as lm-evaluation-harness does: the task's cloze context
(``Question: {q}\\nAnswer:`` for ARC, the question stem for OpenBookQA, support + question for SciQ) and
the response ``" {gold choice}"``; pair it with ``receiver_template: raw`` and ``sharer_template: raw``
so that both models see the text as given. QA items answer with their first gold answer.

Several tasks are mixed with ``tasks:``, each with a ``weight`` that multiplies its rows (2: every row
twice, 0.25: a seeded quarter of them; default 1)::

    data:
      type: eval_task
      format: cloze
      tasks: [{name: arc_easy, split: train, weight: 2}, {name: sciq, split: train, weight: 0.25}]

Validation rows are drawn first from the weighted, shuffled mixture (each row at most once) and never
appear in training.
"""
from __future__ import annotations

import logging
import math
import random
from collections import Counter
from typing import Any, Literal

from lcf.data.instruct import InstructData, InstructExample, example_features
from lcf.data.rows import DataError
from lcf.errors import suggest
from lcf.registry import datasets

log = logging.getLogger(__name__)
TASK_KEYS = ("name", "split", "weight", "options")


def _check_task_entry(entry: Any, i: int) -> dict[str, Any]:
    where = f"eval_task: tasks[{i}]"
    if not isinstance(entry, dict) or "name" not in entry:
        raise DataError(f"{where} must be a mapping with at least `name` (e.g. {{name: arc_easy, split: train, "
                        f"weight: 1}}), got {entry!r}")
    for key in entry:
        if key not in TASK_KEYS:
            raise DataError(f"{where}: unknown key {key!r}.{suggest(str(key), TASK_KEYS)} Allowed: {', '.join(TASK_KEYS)}.")
    weight = entry.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 or math.isinf(weight):
        raise DataError(f"{where}: weight must be a positive number (row multiplier), got {weight!r}")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise DataError(f"{where}: options must be a mapping of task options, got {options!r}")
    return {"name": str(entry["name"]), "split": entry.get("split"), "weight": float(weight), "options": dict(options)}


@datasets.register("eval_task")
class EvalTaskData(InstructData):
    """Instruction examples from registered evaluation tasks (see the module docstring).

    task: a registered task name (``lcf list`` shows them); split: one of its splits (default: its
    default split); task_options: further task arguments (e.g. ``{all_rows: true}``). Or ``tasks``: a
    list of ``{name, split, weight, options}`` mixed into one data set (exactly one of task / tasks).
    format: ``prompt`` (lcf eval's chat-format prompt) or ``cloze`` (lm-eval's raw context, response
    ``" {choice}"``). answer: ``option`` (the option text) or ``letter`` for multiple choice (prompt
    format only). The other arguments are those of ``instruct_json``.
    """

    def __init__(
        self,
        task: str | None = None,
        split: str | None = None,
        task_options: dict[str, Any] | None = None,
        tasks: list[dict[str, Any]] | None = None,
        format: Literal["prompt", "cloze"] = "prompt",
        answer: Literal["option", "letter"] = "option",
        choices: bool = False,
        data_root: str | None = None,
        max_prompt_tokens: int = 256,
        max_response_tokens: int = 128,
        train_size: int | None = None,
        val_size: int = 64,
        seed: int = 0,
        receiver_template: str = "auto",
        sharer_template: str = "auto",
    ) -> None:
        if answer not in ("option", "letter"):
            raise DataError(f"eval_task: answer must be 'option' or 'letter', got {answer!r}")
        if format not in ("prompt", "cloze"):
            raise DataError(f"eval_task: format must be 'prompt' or 'cloze', got {format!r}")
        if format == "cloze" and answer == "letter":
            raise DataError("eval_task: format 'cloze' answers with the option text; drop `answer: letter` "
                            "or use format 'prompt'")
        if choices and format != "cloze":
            raise DataError("eval_task: choices: true (every option in each example, for the option_ce loss) "
                            "needs format: cloze")
        if (task is None) == (tasks is None or len(tasks) == 0):
            raise DataError("eval_task: give exactly one of `task` (one task) or `tasks` (a weighted mixture: "
                            f"[{{name, split, weight}}, ...]); got task={task!r}, tasks={tasks!r}")
        if tasks is not None and (split is not None or task_options):
            raise DataError("eval_task: with `tasks`, give each task's split and options inside its entry")
        super().__init__(data_root=data_root, max_prompt_tokens=max_prompt_tokens,
                         max_response_tokens=max_response_tokens, train_size=train_size, val_size=val_size,
                         seed=seed, receiver_template=receiver_template, sharer_template=sharer_template)
        if tasks is None:
            self.tasks = [{"name": task, "split": split, "weight": 1.0, "options": dict(task_options or {})}]
        else:
            self.tasks = [_check_task_entry(e, i) for i, e in enumerate(tasks)]
        self.task, self.split, self.answer, self.format, self.choices = task, split, answer, format, choices
        self._options: list[tuple[list[str], list[str], int] | None] = []  # per row: option texts, choices, gold
        self.task_options = dict(task_options or {})
        self._weights: list[float] = []

    @staticmethod
    def _check_source(files: list[str] | None, hub_id: str | None) -> None:
        pass  # the tasks name their own files (or hub datasets)

    def __repr__(self) -> str:
        what = ", ".join(f"{t['name']}:{t['split'] or 'default'}x{t['weight']:g}" for t in self.tasks)
        return (f"EvalTaskData({what}, format={self.format!r}, answer={self.answer!r}, train_size={self.train_size}, "
                f"val_size={self.val_size}, seed={self.seed})")

    def read(self) -> list[InstructExample]:
        """Every item of every task, in task then file order (weights are applied by :meth:`prepare`)."""
        from lcf.eval.tasks import MCItem, load_task

        rows: list[InstructExample] = []
        self._weights, self._options = [], []
        for spec in self.tasks:
            task = load_task(spec["name"], data_root=self.data_root, split=spec["split"], seed=self.seed,
                             **spec["options"])
            items = task.all_items()
            for i, item in enumerate(items):
                options = None
                if isinstance(item, MCItem):
                    if self.format == "cloze":
                        prompt, response = task.cloze_prompt(item), task.option_texts(item)[item.answer]
                        options = (task.option_texts(item), list(item.choices), item.answer)
                    else:
                        prompt = task.prompt(item)
                        response = item.labels[item.answer] if self.answer == "letter" else item.choices[item.answer]
                elif self.format == "cloze":
                    raise DataError(f"eval_task: format 'cloze' needs multiple-choice items; task {spec['name']!r} "
                                    f"is {task.kind!r}. Use format 'prompt' for it.")
                else:
                    prompt, response = task.prompt(item), item.answers[0]
                self._options.append(options)
                rows.append(InstructExample(instruction=prompt, input="", response=response,
                                            source=f"{spec['name']}:{task.split}", index=i))
            self._weights += [spec["weight"]] * len(items)
        return rows

    def _choice_features(self, row: int, tokenizer: Any, sharer_tokenizer: Any = None) -> dict[str, Any]:
        """Every option of row ``row``, tokenized as the gold response is (the option text alone, cut to
        ``max_response_tokens``), with the gold index and each choice's length in characters (acc_norm);
        with ``sharer_tokenizer`` also in the sharer's tokens (``sharer_choice_ids``, for the sharer as teacher)."""
        texts, choices, gold = self._options[row]  # type: ignore[misc]

        def tokens(tok: Any) -> list[list[int]]:
            return [list(tok(t, add_special_tokens=False)["input_ids"])[:self.max_response_tokens] for t in texts]
        out = {"choice_ids": tokens(tokenizer), "choice_gold": gold, "choice_chars": [len(c) for c in choices]}
        if sharer_tokenizer is not None:
            out["sharer_choice_ids"] = tokens(sharer_tokenizer)
        return out

    def weighted_order(self, n_rows: int) -> list[int]:
        """Row indices with each row repeated by its task's weight (the fractional part a seeded draw),
        shuffled with ``seed``. With all weights 1 this is the plain seeded shuffle of ``instruct_json``."""
        rng = random.Random(self.seed)
        if all(w == 1.0 for w in self._weights):
            order = list(range(n_rows))
        else:
            order = []
            for i, w in enumerate(self._weights):
                order += [i] * (int(w) + (rng.random() < w - int(w)))
        random.Random(self.seed).shuffle(order)
        return order

    def prepare(self, receiver_tokenizer: Any, sharer_tokenizer: Any, aligner: Any) -> tuple[list[dict], list[dict]]:
        """``(train_features, val_features)``: validation rows first from the weighted shuffled order
        (each once), then training entries until ``train_size`` (repeats of a row share its features)."""
        rows = self.read()
        if not rows:
            raise DataError(f"eval_task: the tasks {[t['name'] for t in self.tasks]} have no items")
        order = self.weighted_order(len(rows))
        kwargs = dict(receiver_template=self.receiver_template, sharer_template=self.sharer_template,
                      max_prompt_tokens=self.max_prompt_tokens, max_response_tokens=self.max_response_tokens)
        built: dict[int, dict | str] = {}
        dropped: Counter[str] = Counter()

        def feature(i: int) -> dict | None:
            if i not in built:
                built[i] = example_features(rows[i], receiver_tokenizer, sharer_tokenizer, aligner, **kwargs)
                if not isinstance(built[i], dict):
                    dropped[built[i]] += 1  # type: ignore[index]
                elif self.choices:
                    built[i].update(self._choice_features(i, receiver_tokenizer,  # type: ignore[union-attr]
                                                          sharer_tokenizer))
            out = built[i]
            return out if isinstance(out, dict) else None

        val, val_rows, pos = [], set(), 0
        while pos < len(order) and len(val) < self.val_size:
            i = order[pos]
            pos += 1
            if i not in val_rows and (f := feature(i)) is not None:
                val.append(f)
                val_rows.add(i)
        train = []
        for i in order[pos:]:
            if self.train_size is not None and len(train) >= self.train_size:
                break
            if i not in val_rows and (f := feature(i)) is not None:
                train.append(f)
        if not train:
            raise DataError(self._empty_message(len(rows), len(built), dropped, len(val)))
        if len(val) < self.val_size:
            log.warning("eval_task: only %d validation examples (val_size=%d)", len(val), self.val_size)
        if dropped:
            log.info("eval_task: dropped %d of %d examined rows (%s)", sum(dropped.values()), len(built),
                     ", ".join(f"{k}: {v}" for k, v in dropped.items()))
        mix = Counter(f["source"] for f in train)
        log.info("eval_task: %d training examples (%s), %d validation", len(train),
                 ", ".join(f"{k}: {v}" for k, v in mix.items()), len(val))
        return train, val
