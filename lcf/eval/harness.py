"""Run every system on the same items of every task; score, time, and report.

    from lcf.eval.harness import evaluate, write_report
    results = evaluate([ReceiverAlone(a), SharerAlone(a), AdapterSystem(a)], [load_task("arc_easy", limit=50)])
    write_report(results, "reports/quickstart")          # results.json, report.md, 3 PNG plots

* multiple-choice tasks, ``mc_format``: ``"lmeval"`` (default) scores as lm-evaluation-harness does
  (raw cloze prompt, no chat template, each option ``" " + choice``; see :mod:`lcf.eval.scoring`)
  and reports ``acc`` (argmax summed log-likelihood) and ``acc_norm`` (argmax log-likelihood per
  character of the choice; the headline). The other formats put the question and its lettered
  options in the chat template: ``"chat"`` scores the option texts, ``"letter"`` the letters
  ``" A"``, ``" B"``, ..., ``"generate-letter"`` generates a short reply greedily and reads the
  letter it names (:func:`letter_of`); score = accuracy.
* QA tasks (``em_f1``: SQuAD, HotpotQA): greedy generation, first non-empty line, SQuAD EM / F1.
* GSM8K (``exact_match``): greedy generation, the last number of the answer against the gold number.

Generation is greedy and every (system, task) run starts from ``torch.manual_seed(seed)``, so two
runs give identical numbers. Latency: time to first token (a 1-token generation) and end-to-end time
(a generation forced to ``latency_tokens`` new tokens) at batch 1, median of ``latency_runs`` runs
after one warm-up, measured with CUDA events on CUDA and ``time.perf_counter`` otherwise (not for
systems with ``timed = False``: the mismatched control needs a second item, and costs what the
adapter costs).
"""
from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from lcf.errors import LCFError
from lcf.eval.metrics import gsm8k_number, squad_scores
from lcf.eval.report import format_table, write_report
from lcf.eval.scoring import MC_FORMATS, cloze_predictions, cloze_requests, first_argmax
from lcf.eval.systems import System
from lcf.eval.tasks import MCItem, QAItem, Task

__all__ = ["adapter_labels", "evaluate", "format_table", "measure_latency", "parse_splits", "primary_score", "write_report"]

#: Default new-token budget of generative tasks (by task name; others get ``"default"``).
MAX_NEW_TOKENS: dict[str, int] = {"gsm8k": 256, "default": 32}
GENERATED_LETTER_TOKENS = 12  # reply length read by generate_letter ("B", "(B) ...", "The answer is B")


def primary_score(scores: dict[str, float]) -> float:
    """The headline number of a task's scores: accuracy, else acc_norm, else F1, else EM."""
    for key in ("accuracy", "acc_norm", "f1", "em"):
        if key in scores:
            return scores[key]
    raise LCFError(f"no headline metric in {sorted(scores)}")


# -- command-line helpers ----------------------------------------------------------------------------
def parse_splits(items: Sequence[str] | None, tasks: Sequence[str]) -> dict[str, str | None]:
    """Split per task from ``["validation", "arc_easy=test"]``: a bare split applies to every task,
    ``TASK=SPLIT`` to one (and wins); None keeps the task's default split."""
    out: dict[str, str | None] = {t: None for t in tasks}
    for item in items or []:
        if "=" not in item:
            out = {t: item for t in tasks}
    for item in items or []:
        task, sep, split = item.partition("=")
        if sep:
            if task not in out:
                raise LCFError(f"split {item!r}: task {task!r} is not among the tasks {list(tasks)}")
            out[task] = split
    return out


_FLAG_OPTIONS = {"data_root": "--data-root", "split": "--split (TASK=SPLIT)", "limit": "--limit", "seed": "--seed"}


def parse_task_options(items: Sequence[str] | None, tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Constructor options per task from ``["mmlu_redux.all_rows=true", "arc_easy.hub_id=allenai/ai2_arc"]``.
    Values are read as YAML scalars (``true``, ``3``, ``0.5``; anything else, and ``hub_id`` /
    ``hub_config``, stays a string)."""
    import yaml

    out: dict[str, dict[str, Any]] = {t: {} for t in tasks}
    for item in items or []:
        key, sep, value = item.partition("=")
        task, dot, option = key.partition(".")
        if not sep or not dot or not option:
            raise LCFError(f"task option {item!r}: expected TASK.OPTION=VALUE, e.g. mmlu_redux.all_rows=true")
        if task not in out:
            raise LCFError(f"task option {item!r}: task {task!r} is not among the tasks {list(tasks)}")
        if option in _FLAG_OPTIONS:
            raise LCFError(f"task option {item!r}: set {option} with {_FLAG_OPTIONS[option]}, not as a task option")
        parsed = yaml.safe_load(value) if value else ""
        keep_text = option in ("hub_id", "hub_config") or not isinstance(parsed, (bool, int, float, str))
        out[task][option] = value if keep_text else parsed
    return out


def adapter_labels(dirs: Sequence[str]) -> list[str]:
    """Report names of adapter folders: the folder name (its parent's when it is just ``adapter``),
    made unique with ``-2``, ``-3``, ..."""
    labels: list[str] = []
    for d in dirs:
        p = Path(d).resolve()
        base = p.parent.name if p.name == "adapter" and p.parent.name else p.name
        label, k = base, 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        labels.append(label)
    return labels


# -- timing ------------------------------------------------------------------------------------------
def elapsed_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of ``fn()`` in milliseconds (CUDA events on a GPU, so queued kernels are counted)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def measure_latency(system: System, prompt: str, *, runs: int = 3, new_tokens: int = 32) -> dict[str, float]:
    """Batch-1 latency in ms: ``ttft_ms`` (prompt -> first token, sharer prefill and fusion included)
    and ``e2e_ms`` (prompt -> ``new_tokens`` tokens), medians of ``runs`` runs after a warm-up."""
    device = system.device
    system.generate([prompt], max_new_tokens=new_tokens, min_new_tokens=new_tokens)  # warm-up
    ttft = [elapsed_ms(lambda: system.generate([prompt], max_new_tokens=1), device) for _ in range(runs)]
    e2e = [elapsed_ms(lambda: system.generate([prompt], max_new_tokens=new_tokens, min_new_tokens=new_tokens),
                       device) for _ in range(runs)]
    return {"ttft_ms": statistics.median(ttft), "e2e_ms": statistics.median(e2e), "new_tokens": new_tokens,
            "runs": runs, "device": str(device)}


# -- one (system, task) -----------------------------------------------------------------------------
def _run_mc(system: System, task: Task, items: list[MCItem], letter_scoring: bool, batch_size: int,
            on_batch: Callable[[int], None] | None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    options = [task.letter_texts(it) if letter_scoring else task.option_texts(it) for it in items]
    scores = system.score_options([task.prompt(it) for it in items], options, batch_size=batch_size,
                                  on_batch=on_batch)
    rows = []
    for it, s in zip(items, scores):
        pred = first_argmax(s)  # first option on exact ties
        rows.append({"id": it.id, "pred": pred, "gold": it.answer, "correct": pred == it.answer,
                     "scores": [float(x) for x in s]})
    return {"accuracy": sum(r["correct"] for r in rows) / len(rows)}, rows


def _run_cloze(system: System, task: Task, items: list[MCItem], batch_size: int,
               on_batch: Callable[[int], None] | None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """lm-eval's multiple choice: ``acc`` and ``acc_norm`` (see :mod:`lcf.eval.scoring`)."""
    contexts, continuations = cloze_requests(task, items)
    scores = system.score_continuations(contexts, continuations, batch_size=batch_size, on_batch=on_batch)
    rows = []
    for it, s in zip(items, scores):
        pred, pred_norm = cloze_predictions(s, it.choices)
        rows.append({"id": it.id, "pred": pred, "pred_norm": pred_norm, "gold": it.answer,
                     "correct": pred == it.answer, "correct_norm": pred_norm == it.answer,
                     "scores": [float(x) for x in s]})
    n = len(rows)
    return {"acc": sum(r["correct"] for r in rows) / n, "acc_norm": sum(r["correct_norm"] for r in rows) / n}, rows


def resolve_mc_format(mc_format: str | None, letter_scoring: bool = False, generate_letter: bool = False) -> str:
    """The multiple-choice format from ``mc_format`` and the older flags (default ``"lmeval"``)."""
    if letter_scoring and generate_letter:
        raise LCFError("multiple choice is scored either by letter likelihood (letter_scoring / --letter) or by the "
                       "generated letter (generate_letter / --generate-letter), not both; pick one")
    implied = "letter" if letter_scoring else "generate-letter" if generate_letter else None
    if mc_format is not None and mc_format not in MC_FORMATS:
        raise LCFError(f"unknown multiple-choice format {mc_format!r}; expected one of {', '.join(MC_FORMATS)}")
    if implied and mc_format not in (None, implied):
        raise LCFError(f"multiple-choice format {mc_format!r} conflicts with the {implied} flag; give one of them "
                       f"(--format {implied} is the same as --{implied})")
    return implied or mc_format or "lmeval"


_LETTER_REPLY = re.compile(r"\s*\(?([A-Z])(?:[).:,]|\s|$)")
_ANSWER_IS = re.compile(r"answer is:?\s*\(?([A-Z])(?:[).:,]|\s|$)", re.IGNORECASE)


def letter_of(reply: str, labels: Sequence[str]) -> int:
    """Index of the option a generated reply names, or -1. The reply must start with one of ``labels``
    (``B``, ``(B)``, ``B.``, ``B) text``, ...) or say "the answer is B" / "The correct answer is (B)".
    Anything else counts as no answer. A reply opening with the article "A " reads as option A; the
    prompts end with "Answer:", so replies usually open with a letter."""
    m = _LETTER_REPLY.match(reply) or _ANSWER_IS.search(reply)
    return labels.index(m.group(1)) if m and m.group(1) in labels else -1


def _run_mc_generated(system: System, task: Task, items: list[MCItem], batch_size: int,
                      on_batch: Callable[[int], None] | None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    texts = system.generate([task.prompt(it) for it in items], GENERATED_LETTER_TOKENS, batch_size=batch_size,
                            on_batch=on_batch)
    rows = []
    for it, text in zip(items, texts):
        pred = letter_of(text, list(it.labels))
        rows.append({"id": it.id, "text": text, "pred": pred, "gold": it.answer, "correct": pred == it.answer})
    return {"accuracy": sum(r["correct"] for r in rows) / len(rows)}, rows


def first_line(text: str) -> str:
    """The first non-empty line of a generated answer, stripped (what QA items are scored on)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _run_qa(system: System, task: Task, items: list[QAItem], max_new_tokens: int, batch_size: int,
            on_batch: Callable[[int], None] | None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    texts = system.generate([task.prompt(it) for it in items], max_new_tokens, batch_size=batch_size,
                            on_batch=on_batch)
    if task.metric == "exact_match":  # GSM8K: the last number of the answer
        preds = [gsm8k_number(t) or "" for t in texts]
        correct = [p in it.answers for p, it in zip(preds, items)]
        rows = [{"id": it.id, "text": t, "pred": p, "gold": it.answers, "correct": c}
                for it, t, p, c in zip(items, texts, preds, correct)]
        return {"em": sum(correct) / len(items)}, rows
    preds = [first_line(t) for t in texts]
    rows = [{"id": it.id, "text": t, "pred": p, "gold": it.answers} for it, t, p in zip(items, texts, preds)]
    return squad_scores(preds, [it.answers for it in items]), rows


def _adapter_entry(system: System) -> tuple[str, dict[str, Any]] | None:
    label = getattr(system, "label", None)
    if label is None or not hasattr(system, "gate_values"):
        return None
    adapter = system.adapter  # type: ignore[attr-defined]
    gates = system.gate_values()  # type: ignore[attr-defined]
    return label, {
        "num_parameters": system.num_parameters, "size_bytes": system.size_bytes,
        "translator": adapter.config.get("translator"), "sharer": adapter.sharer.name,
        "receiver": adapter.receiver.name, "receiver_layers": len(adapter.config.get("shapes", {}).get("receiver", [])),
        "gates": {str(k): list(v) for k, v in sorted(gates.items())},
        "pruned_from": ((adapter.config.get("training") or {}).get("pruned") or {}).get("from"),  # lcf prune
    }


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def evaluate(systems: Sequence[System], tasks: Sequence[Task], *, mc_format: str | None = None,
             letter_scoring: bool = False, generate_letter: bool = False, batch_size: int = 8, progress: bool = True,
             seed: int = 0, max_new_tokens: int | dict[str, int] | None = None, latency_runs: int = 3,
             latency_tokens: int = 32) -> dict[str, Any]:
    """Score every system on the same items of every task; see the module docstring.

    mc_format: one of :data:`lcf.eval.scoring.MC_FORMATS` (default ``"lmeval"``); ``letter_scoring`` /
        ``generate_letter`` are the older spellings of ``"letter"`` / ``"generate-letter"``.

    max_new_tokens: generation budget of QA tasks (an int for all, or per task name; default
        :data:`MAX_NEW_TOKENS`). latency_runs: timed runs per measure (0 skips timing).
    Returns a JSON-safe dict: ``config``, ``tasks`` (kind, metric, n, item ids), ``systems``
    (description + latency), ``scores[system][task]`` (metrics + ``primary``), ``predictions``
    and ``adapters`` (size, translator, gate values per receiver layer).
    """
    if not systems or not tasks:
        raise LCFError(f"evaluate needs at least one system and one task (got {len(systems)} and {len(tasks)})")
    mc_format = resolve_mc_format(mc_format, letter_scoring, generate_letter)
    letter_scoring, generate_letter = mc_format == "letter", mc_format == "generate-letter"
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise LCFError(f"system names must be unique, got {names}")
    budgets = dict(MAX_NEW_TOKENS)
    if isinstance(max_new_tokens, int):
        budgets = {"default": max_new_tokens}
    elif max_new_tokens:
        budgets.update(max_new_tokens)
    items = {t.name: t.items() for t in tasks}  # one sample per task, shared by every system
    results: dict[str, Any] = {
        "config": {"mc_format": mc_format, "letter_scoring": letter_scoring, "generate_letter": generate_letter,
                   "generate_letter_tokens": GENERATED_LETTER_TOKENS, "batch_size": batch_size, "seed": seed,
                   "latency_runs": latency_runs, "latency_tokens": latency_tokens},
        "tasks": {t.name: {"kind": t.kind, "metric": t.metric, "n": len(items[t.name]), "split": t.split,
                           "source": t.source, "item_ids": [it.id for it in items[t.name]]} for t in tasks},
        "systems": {}, "scores": {}, "predictions": {}, "adapters": {},
    }
    with _progress(progress) as bar:
        for system in systems:
            results["systems"][system.name] = system.describe()
            entry = _adapter_entry(system)
            if entry:
                results["adapters"].setdefault(*entry)
            results["scores"][system.name], results["predictions"][system.name] = {}, {}
            for task in tasks:
                its = items[task.name]
                by_options = task.kind == "mc" and not generate_letter
                units = sum(len(it.choices) for it in its) if by_options else len(its)
                tid = bar.add_task(f"{system.name} / {task.name}", total=units) if bar else None
                advance = (lambda n, tid=tid: bar.advance(tid, n)) if bar else None
                torch.manual_seed(seed)
                if task.kind == "mc" and generate_letter:
                    scores, rows = _run_mc_generated(system, task, its, batch_size, advance)
                elif task.kind == "mc" and mc_format == "lmeval":
                    scores, rows = _run_cloze(system, task, its, batch_size, advance)
                elif task.kind == "mc":
                    scores, rows = _run_mc(system, task, its, letter_scoring, batch_size, advance)
                else:
                    budget = budgets.get(task.name, budgets.get("default", MAX_NEW_TOKENS["default"]))
                    scores, rows = _run_qa(system, task, its, budget, batch_size, advance)
                messages = getattr(system, "last_messages", None)  # text relay: what the sharer wrote
                if messages and len(messages) == len(rows):
                    for row, message in zip(rows, messages):
                        row["message"] = message
                results["scores"][system.name][task.name] = scores | {"primary": primary_score(scores)}
                results["predictions"][system.name][task.name] = rows
            if latency_runs > 0 and system.timed:
                first = items[tasks[0].name][0]
                torch.manual_seed(seed)
                latency = measure_latency(system, tasks[0].prompt(first), runs=latency_runs, new_tokens=latency_tokens)
                results["systems"][system.name]["latency"] = latency
    return results
