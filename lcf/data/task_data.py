"""Training data from an evaluation task: each item of a registered ``lcf.eval`` task becomes an
instruction example in exactly the prompt format ``lcf eval`` scores, so an adapter can be trained on
one split of a benchmark (say ARC-Easy test) and evaluated on another (ARC-Easy validation).

    data: {type: eval_task, task: arc_easy, split: test, val_size: 64}

Multiple-choice items answer with the correct option's text (what ``lcf eval`` scores by default) or,
with ``answer: letter``, with its letter; QA items answer with their first gold answer.
"""
from __future__ import annotations

from typing import Any, Literal

from lcf.data.instruct import InstructData, InstructExample
from lcf.data.rows import DataError
from lcf.registry import datasets


@datasets.register("eval_task")
class EvalTaskData(InstructData):
    """Instruction examples from a registered evaluation task (see the module docstring).

    task: a registered task name (``lcf list`` shows them); split: one of its splits (default: its
    default split); task_options: further task arguments (e.g. ``{all_rows: true}``, ``{hub_id: ...}``);
    answer: ``option`` (the option text) or ``letter`` for multiple choice. The other arguments are
    those of ``instruct_json``.
    """

    def __init__(
        self,
        task: str,
        split: str | None = None,
        task_options: dict[str, Any] | None = None,
        answer: Literal["option", "letter"] = "option",
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
        super().__init__(data_root=data_root, max_prompt_tokens=max_prompt_tokens,
                         max_response_tokens=max_response_tokens, train_size=train_size, val_size=val_size,
                         seed=seed, receiver_template=receiver_template, sharer_template=sharer_template)
        self.task, self.split, self.answer = task, split, answer
        self.task_options = dict(task_options or {})

    @staticmethod
    def _check_source(files: list[str] | None, hub_id: str | None) -> None:
        pass  # the task names its own files (or hub dataset)

    def __repr__(self) -> str:
        return (f"EvalTaskData(task={self.task!r}, split={self.split!r}, answer={self.answer!r}, "
                f"train_size={self.train_size}, val_size={self.val_size}, seed={self.seed})")

    def read(self) -> list[InstructExample]:
        from lcf.eval.tasks import MCItem, load_task

        task = load_task(self.task, data_root=self.data_root, split=self.split, seed=self.seed, **self.task_options)
        rows = []
        for i, item in enumerate(task.all_items()):
            if isinstance(item, MCItem):
                response = item.labels[item.answer] if self.answer == "letter" else item.choices[item.answer]
            else:
                response = item.answers[0]
            rows.append(InstructExample(instruction=task.prompt(item), input="", response=response,
                                        source=f"{self.task}:{task.split}", index=i))
        if not rows:
            raise DataError(f"eval_task: task {self.task!r} (split {task.split!r}) has no items")
        return rows
