"""Log-likelihood rows shared by every system, and multiple choice in lm-evaluation-harness's format.

Rows: one (item, option) pair per row, the item's prompt cache repeated for each of its options
(:func:`option_rows`, :func:`expand_view`), summed log-probabilities of each row's tokens
(:func:`row_log_likelihood`; every value also says whether the option is the greedy continuation).

The ``lmeval`` multiple-choice format reproduces lm-evaluation-harness 0.4.x (``output_type:
multiple_choice`` with its HF causal-LM model) so that numbers compare with published ones:

* the context is the task's raw cloze prompt (:meth:`lcf.eval.tasks.Task.cloze_prompt`, e.g. ARC's
  ``"Question: {question}\\nAnswer:"``), with no chat template; each option is the continuation
  ``" " + choice`` (lm-eval's default ``target_delimiter``);
* trailing whitespace of the context moves to the front of the continuation
  (:func:`move_trailing_space`);
* the context is tokenized with the tokenizer's default special tokens (lm-eval's
  ``add_bos_token=None``: Gemma-3 gets its BOS, SmolLM2 none), and nothing is added when the text
  already starts with the BOS token (:func:`context_ids`); the continuation's tokens are those of
  ``context + continuation`` after the context's token count (:func:`continuation_ids`), so a token
  that would merge across the boundary is scored the way lm-eval scores it;
* ``acc``: argmax of the summed log-likelihood; ``acc_norm``: argmax of the log-likelihood divided
  by the choice's length in characters (``len(choice)``, without the delimiter); ties go to the first
  option (``numpy.argmax``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lcf.align.tokens import auto_special_tokens
from lcf.errors import LCFError
from lcf.models.kv import KVView

#: How `lcf eval` scores multiple choice: lm-eval's raw cloze (default), or inside the chat template
#: with the lettered options listed, by option text, by letter, or by the letter a greedy reply names.
MC_FORMATS: tuple[str, ...] = ("lmeval", "chat", "letter", "generate-letter")
TARGET_DELIMITER = " "


class OptionScore(float):
    """A summed log-likelihood that also records whether every token of the option was the argmax."""

    greedy: bool = False

    def __new__(cls, value: float, greedy: bool = False) -> "OptionScore":
        out = super().__new__(cls, value)
        out.greedy = bool(greedy)
        return out


# -- rows ------------------------------------------------------------------------------------------
def option_rows(options: list[list[list[int]]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``(item_of_row, response_ids, response_mask)``: one row per (item, option), responses RIGHT-padded."""
    flat = [(i, ids) for i, opts in enumerate(options) for ids in opts]
    width = max(len(ids) for _, ids in flat)
    r_ids = torch.full((len(flat), width), pad_id, dtype=torch.long)
    r_mask = torch.zeros(len(flat), width, dtype=torch.long)
    for row, (_, ids) in enumerate(flat):
        r_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        r_mask[row, :len(ids)] = 1
    item = torch.tensor([i for i, _ in flat], dtype=torch.long)
    return item.to(device), r_ids.to(device), r_mask.to(device)


def expand_view(view: KVView, index: torch.Tensor) -> KVView:
    """The cache rows ``index`` of ``view`` (an item's prompt cache repeated for each of its options)."""
    return KVView([k.index_select(0, index) for k in view.keys], [v.index_select(0, index) for v in view.values],
                  view.seq_len, view.specs)


def row_log_likelihood(logits: torch.Tensor, r_ids: torch.Tensor, r_mask: torch.Tensor,
                       options: list[list[list[int]]]) -> list[list[float]]:
    """Sum log p of each row's response tokens from logits over [last prompt token, response...],
    regrouped per item; each value is an :class:`OptionScore` (``.greedy``: all tokens were argmax)."""
    logp_all = torch.log_softmax(logits[:, :-1].float(), -1)
    logp = logp_all.gather(-1, r_ids.unsqueeze(-1)).squeeze(-1)
    hits = (logp_all.argmax(-1) == r_ids) | (r_mask == 0)
    flat = [OptionScore(v, g) for v, g in zip((logp * r_mask).sum(-1).double().tolist(), hits.all(-1).tolist())]
    out, pos = [], 0
    for opts in options:
        out.append(flat[pos:pos + len(opts)])
        pos += len(opts)
    return out


# -- lm-eval's request encoding --------------------------------------------------------------------
def move_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's split: trailing whitespace of the context goes to the front of the continuation."""
    kept = context.rstrip()
    return kept, context[len(kept):] + continuation


def context_ids(tokenizer: Any, context: str) -> list[int]:
    """Token ids of a raw context: the tokenizer's default special tokens unless it starts with BOS."""
    return list(tokenizer(context, add_special_tokens=auto_special_tokens(tokenizer, context))["input_ids"])


def continuation_ids(tokenizer: Any, context: str, continuation: str) -> list[int]:
    """Tokens of ``continuation`` after ``context`` as lm-eval splits them: the ids of the whole text
    after as many tokens as the context alone has. Call after :func:`move_trailing_space`."""
    if not context:
        raise LCFError("lm-eval-style scoring needs a non-empty context (the cloze prompt of the item)")
    whole = context_ids(tokenizer, context + continuation)
    ids = whole[len(context_ids(tokenizer, context)):]
    if not ids:
        raise LCFError(f"continuation {continuation!r} after {context[-40:]!r} has no tokens of its own; it cannot "
                       f"be scored (is the choice empty?)")
    return ids


# -- predictions -----------------------------------------------------------------------------------
def first_argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on exact ties (as ``numpy.argmax``)."""
    return max(range(len(values)), key=lambda j: (values[j], -j))


def cloze_predictions(lls: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """``(pred, pred_norm)`` of one item: argmax log-likelihood, and argmax log-likelihood per
    character of the choice (lm-eval's ``acc`` and ``acc_norm``)."""
    lengths = [float(len(c)) for c in choices]
    if any(n == 0 for n in lengths):
        raise LCFError(f"acc_norm divides by the choice length, but a choice is empty: {list(choices)}")
    return first_argmax(lls), first_argmax([ll / n for ll, n in zip(lls, lengths)])


def cloze_requests(task: Any, items: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """The contexts and continuations (``" " + choice``) lm-eval builds for ``items`` of ``task``."""
    contexts = [task.cloze_prompt(it) for it in items]
    return contexts, [[TARGET_DELIMITER + c for c in it.choices] for it in items]
