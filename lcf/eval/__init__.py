"""Evaluation tasks and metrics: benchmark items, zero-shot prompts and answer scoring.

:mod:`lcf.eval.tasks` reads benchmarks (ARC, OpenBookQA, MMLU, MMLU-Redux, SQuAD, HotpotQA,
GSM8K) from a data root or a hub dataset into :class:`MCItem` / :class:`QAItem` lists;
:mod:`lcf.eval.metrics` scores predictions. Tasks are registered in :data:`lcf.registry.tasks`.
"""
from lcf.eval.metrics import accuracy, exact_match, f1, gsm8k_number, normalize_answer, squad_scores
from lcf.eval.tasks import MCItem, QAItem, Task, load_task

__all__ = [
    "MCItem",
    "QAItem",
    "Task",
    "accuracy",
    "exact_match",
    "f1",
    "gsm8k_number",
    "load_task",
    "normalize_answer",
    "squad_scores",
]
