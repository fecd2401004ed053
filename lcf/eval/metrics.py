"""Answer metrics: SQuAD-style exact match / token F1, GSM8K number extraction and accuracy.

Scores are fractions in ``[0, 1]`` (``squad_scores`` rescales torchmetrics' percentages).

    >>> exact_match("The Eiffel Tower.", ["eiffel tower"])
    1.0
    >>> gsm8k_number("... so she makes $1,234 per day.")
    '1234'
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lcf.errors import LCFError

__all__ = ["MetricError", "accuracy", "exact_match", "f1", "gsm8k_number", "normalize_answer", "squad_scores"]

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# A number not glued to a preceding word/number: optional sign, thousands groups or plain digits, decimals.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


class MetricError(LCFError, ValueError):
    """Predictions and gold answers that cannot be scored together (empty, mismatched lengths, ...)."""


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and articles (a/an/the), collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _golds(golds: str | Sequence[str], fn: str) -> list[str]:
    out = [golds] if isinstance(golds, str) else list(golds)
    if not out:
        raise MetricError(f"{fn}: got an empty list of gold answers; every item needs at least one gold answer")
    bad = [g for g in out if not isinstance(g, str)]
    if bad:
        raise MetricError(f"{fn}: gold answers must be strings, got {type(bad[0]).__name__} {bad[0]!r}")
    return out


def exact_match(pred: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _golds(golds, "exact_match")))


def _f1_one(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:  # no-answer: 1 if both empty
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(pred: str, golds: str | Sequence[str]) -> float:
    """SQuAD token F1 between the normalised prediction and gold answers (max over golds)."""
    p = normalize_answer(pred).split()
    return max(_f1_one(p, normalize_answer(g).split()) for g in _golds(golds, "f1"))


def squad_scores(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus ``{"em": ..., "f1": ...}`` (fractions in [0, 1]) computed with ``torchmetrics.text.SQuAD``.

    ``preds[i]`` is scored against the gold answers ``golds[i]`` (any may match). torchmetrics
    takes ``[{"prediction_text", "id"}]`` and ``[{"answers": {"text", "answer_start"}, "id"}]`` and
    reports percentages; positions serve as ids so repeated questions are not merged.
    """
    preds, golds = list(preds), [_golds(g, "squad_scores") for g in golds]
    if len(preds) != len(golds):
        raise MetricError(f"squad_scores: {len(preds)} predictions but {len(golds)} gold-answer lists")
    if not preds:
        raise MetricError("squad_scores: nothing to score (empty predictions)")
    if not all(isinstance(p, str) for p in preds):
        raise MetricError("squad_scores: predictions must be strings")
    from torchmetrics.text import SQuAD  # lazy: torchmetrics imports torch

    metric = SQuAD()
    pred_rows: list[dict[str, Any]] = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(preds)]
    target_rows: list[dict[str, Any]] = [
        {"answers": {"text": g, "answer_start": [0] * len(g)}, "id": str(i)} for i, g in enumerate(golds)
    ]
    metric.update(pred_rows, target_rows)
    out = metric.compute()
    return {"em": float(out["exact_match"]) / 100.0, "f1": float(out["f1"]) / 100.0}


def gsm8k_number(text: str) -> str | None:
    """The last number in ``text`` with thousands commas removed (``"$1,200.00"`` -> ``"1200"``), or None.

    Trailing zero decimals are dropped (``"18.50"`` -> ``"18.5"``, ``"18.0"`` -> ``"18"``) so that
    predictions compare equal to GSM8K's integer answers as strings. A minus sign counts only when
    it is not glued to a preceding word or number (``"16-3"`` -> ``"3"``, ``"= -3"`` -> ``"-3"``).
    """
    hits = _NUMBER.findall(text or "")
    if not hits:
        return None
    num = hits[-1].replace(",", "")
    if "." in num:
        num = num.rstrip("0").rstrip(".")
    if num in ("-0", ""):
        num = "0"
    return num


def accuracy(preds: Sequence[Any], golds: Sequence[Any]) -> float:
    """Fraction of positions where ``preds[i] == golds[i]``."""
    preds, golds = list(preds), list(golds)
    if len(preds) != len(golds):
        raise MetricError(f"accuracy: {len(preds)} predictions but {len(golds)} gold labels")
    if not preds:
        raise MetricError("accuracy: nothing to score (empty predictions)")
    return sum(p == g for p, g in zip(preds, golds)) / len(preds)
