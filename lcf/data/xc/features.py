"""Cross-context features: the sharer reads a context the receiver never sees.

The sharer prompt is the context alone, as ONE user message in the sharer's template (generation
prompt included); every sharer token carries a span id (:mod:`lcf.data.spans`), -1 outside the
context. The receiver prompt is the question (optionally after the receiver's own part of the
context), formatted exactly like a QA item of :class:`lcf.eval.tasks.Task`::

    {receiver_context}\\n\\nQuestion: {question}\\nAnswer with a short phrase.

The compressor's summary is broadcast to every receiver position, so the alignment is trivial
(``align_index`` all 0, ``align_mask`` all True). Feature dicts hold plain lists:

``sharer_prompt_ids``, ``sharer_span_ids``          the context prompt and its span ids
``receiver_prompt_ids``, ``align_index``, ``align_mask``   the question prompt
``response_ids``        the first gold answer plus the receiver's end-of-turn, truncated
``source``, ``index``, ``id``   where the example came from
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lcf.align.templates import TemplateName, format_messages, tokenizer_label
from lcf.align.tokens import auto_special_tokens, encode_with_offsets
from lcf.data.features import DROP_EMPTY, DROP_PROMPT, end_of_turn_text
from lcf.data.rows import DataError
from lcf.data.spans import check_scheme, token_span_ids
from lcf.errors import LCFError

__all__ = [
    "DROP_CONTEXT", "ContextTooLongError", "XCError", "XCExample", "encode_prompt", "receiver_features",
    "receiver_message", "sharer_features", "xc_features",
]

#: Drop reason of :func:`xc_features` for a context longer than ``max_context_tokens``.
DROP_CONTEXT = "sharer context longer than max_context_tokens"


class XCError(DataError):
    """A cross-context example that cannot be turned into features (empty context, ...)."""


class ContextTooLongError(XCError):
    """A sharer context with more tokens than the sharer may read in one pass."""


@dataclass
class XCExample:
    """One cross-context example: the sharer reads ``sharer_context``; the receiver gets the question
    (after ``receiver_context`` when that is not empty); any of ``answers`` is right. ``distractors``:
    wrong answers the context also holds (another person's value of the asked attribute), if known."""

    id: str
    sharer_context: str
    question: str
    answers: list[str]
    receiver_context: str = ""
    source: str = ""
    distractors: list[str] = field(default_factory=list)


def receiver_message(question: str, receiver_context: str = "") -> str:
    """The receiver's user message; identical to ``Task.prompt`` of a QA item with this context."""
    head = f"{receiver_context.strip()}\n\n" if receiver_context.strip() else ""
    return f"{head}Question: {question.strip()}\nAnswer with a short phrase."


def encode_prompt(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]], list[bool]]:
    """Token ids, offsets and special flags of a formatted prompt (BOS added unless already there)."""
    ids, offsets, special = encode_with_offsets(tokenizer, text, auto_special_tokens(tokenizer, text))
    return ids.tolist(), [(int(a), int(b)) for a, b in offsets], special.tolist()


def sharer_features(
    sharer_tokenizer: Any,
    context: str,
    *,
    template: TemplateName = "auto",
    spans: str = "paragraph",
    span_tokens: int = 32,
    max_tokens: int | None = None,
) -> dict[str, list[int]]:
    """``{"sharer_prompt_ids", "sharer_span_ids"}`` of ``context`` as one user message.

    Raises :class:`XCError` for an empty context and :class:`ContextTooLongError` when the
    prompt has more than ``max_tokens`` tokens.
    """
    check_scheme(spans, span_tokens)
    if not isinstance(context, str) or not context.strip():
        raise XCError(
            f"the sharer context is empty ({context!r}), so the sharer has nothing to read; cross-context "
            f"examples need a non-empty sharer_context (drop such rows, or give the context to the sharer)"
        )
    prompt = format_messages(sharer_tokenizer, [{"role": "user", "content": context}], template)
    ids, offsets, special = encode_prompt(sharer_tokenizer, prompt.text)
    if max_tokens is not None and len(ids) > max_tokens:
        raise ContextTooLongError(
            f"the sharer prompt of this context has {len(ids)} tokens ({len(context)} characters) with "
            f"{tokenizer_label(sharer_tokenizer)}, more than the limit max_tokens={max_tokens}. The limit is the "
            f"recipe's data.max_context_tokens or what the compressor summarises (8,192 tokens, or the sharer's "
            f"maximum positions if fewer). Use a shorter context or split it into several examples "
            f"(or raise data.max_context_tokens if the sharer allows it)."
        )
    span_ids = token_span_ids(offsets, prompt.spans[0], prompt.text, spans, span_tokens, special=special)
    return {"sharer_prompt_ids": ids, "sharer_span_ids": span_ids}


def _receiver_prompt(tokenizer: Any, question: str, receiver_context: str,
                     template: TemplateName) -> tuple[list[dict[str, str]], str, list[int]]:
    if not isinstance(question, str) or not question.strip():
        raise XCError(
            f"the question is empty ({question!r}); the receiver needs a question to answer. Fix or drop the row."
        )
    messages = [{"role": "user", "content": receiver_message(question, receiver_context)}]
    text = format_messages(tokenizer, messages, template).text
    ids, _, _ = encode_prompt(tokenizer, text)
    return messages, text, ids


def receiver_features(
    receiver_tokenizer: Any,
    question: str,
    receiver_context: str = "",
    *,
    template: TemplateName = "auto",
) -> dict[str, list]:
    """``{"receiver_prompt_ids", "align_index", "align_mask"}`` of the question prompt.

    The alignment is trivial: the compressed summary is fused at every receiver position.
    """
    _, _, ids = _receiver_prompt(receiver_tokenizer, question, receiver_context, template)
    return {"receiver_prompt_ids": ids, "align_index": [0] * len(ids), "align_mask": [True] * len(ids)}


def xc_features(
    example: XCExample,
    receiver_tokenizer: Any,
    sharer_tokenizer: Any,
    *,
    receiver_template: TemplateName = "auto",
    sharer_template: TemplateName = "auto",
    spans: str = "paragraph",
    span_tokens: int = 32,
    max_context_tokens: int | None = 480,
    max_prompt_tokens: int = 1024,
    max_response_tokens: int = 32,
    index: int = 0,
) -> dict[str, Any] | str:
    """Features of ``example``, or the reason it is dropped.

    Drop reasons: :data:`DROP_CONTEXT` (sharer prompt over ``max_context_tokens``), ``DROP_PROMPT``
    (receiver prompt over ``max_prompt_tokens``), ``DROP_EMPTY`` (no or empty first answer). Other
    problems (empty context or question) raise :class:`XCError` naming the example.
    """
    try:
        answer = example.answers[0].strip() if example.answers else ""
        if not answer:
            return DROP_EMPTY
        try:
            sharer = sharer_features(sharer_tokenizer, example.sharer_context, template=sharer_template, spans=spans,
                                     span_tokens=span_tokens, max_tokens=max_context_tokens)
        except ContextTooLongError:
            return DROP_CONTEXT
        messages, text, r_ids = _receiver_prompt(receiver_tokenizer, example.question, example.receiver_context,
                                                 receiver_template)
        if len(r_ids) > max_prompt_tokens:
            return DROP_PROMPT
        response = end_of_turn_text(receiver_tokenizer, text, messages, answer, receiver_template)
        response_ids = list(receiver_tokenizer(response, add_special_tokens=False)["input_ids"])[:max_response_tokens]
        if not response_ids:
            return DROP_EMPTY
    except LCFError as exc:
        exc.add_note(f"while building cross-context features for example {example.id!r} ({example.source})")
        raise
    return {
        "receiver_prompt_ids": r_ids, "align_index": [0] * len(r_ids), "align_mask": [True] * len(r_ids),
        **sharer, "response_ids": response_ids, "source": example.source, "index": index, "id": example.id,
    }
