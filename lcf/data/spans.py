"""Span assignment: which part of a context each sharer token belongs to.

A cross-context compressor pools the sharer's cache over a context span by span (then the spans into
one summary), so every token of the sharer prompt gets a span id:

``paragraph``  spans are separated by blank lines (one or more lines holding only whitespace)
``sentence``   a span ends after ``.``, ``!`` or ``?`` (optionally followed by closing quotes or
               brackets) that is followed by whitespace, and at every paragraph break; this is a
               plain rule, so abbreviations such as ``"Mr. Smith"`` also end a sentence
``tokens``     consecutive content tokens in groups of ``span_tokens`` (the last group may be smaller)

:func:`split_spans` gives the character ranges of the spans of a content string (stripped of
surrounding whitespace); :func:`token_span_ids` maps the tokens of a tokenized prompt to span ids,
``-1`` for tokens outside the content (template text, BOS and other special tokens).
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import Any, Literal

from lcf.data.rows import DataError
from lcf.errors import suggest

SpanScheme = Literal["paragraph", "sentence", "tokens"]
SPAN_SCHEMES: tuple[str, ...] = ("paragraph", "sentence", "tokens")

# A paragraph break: a newline, then one or more lines of only whitespace (the last one ends in \n).
_PARAGRAPH_BREAK = re.compile(r"\n(?:[^\S\n]*\n)+")
# A sentence end: terminal punctuation, optional closing quotes/brackets, then whitespace.
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?=\s)")

__all__ = ["SPAN_SCHEMES", "SpanError", "SpanScheme", "check_scheme", "split_spans", "token_span_ids"]


class SpanError(DataError):
    """An unknown span scheme, a bad span size, or offsets that cannot be assigned to spans."""


def check_scheme(scheme: str, span_tokens: int = 32) -> None:
    """Raise :class:`SpanError` for an unknown ``scheme`` (with a close match) or ``span_tokens < 1``."""
    if scheme not in SPAN_SCHEMES:
        raise SpanError(
            f"unknown span scheme {scheme!r}.{suggest(str(scheme), SPAN_SCHEMES)} Expected one of: "
            f"{', '.join(SPAN_SCHEMES)} (recipe key `data.spans`)."
        )
    if isinstance(span_tokens, bool) or not isinstance(span_tokens, int) or span_tokens < 1:
        raise SpanError(
            f"span_tokens must be an int >= 1 (tokens per span of the 'tokens' scheme), got {span_tokens!r}"
        )


def _strip_range(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``(start, end)`` shrunk to exclude surrounding whitespace; None when only whitespace is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _paragraphs(text: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    pos = 0
    for brk in _PARAGRAPH_BREAK.finditer(text):
        rng = _strip_range(text, pos, brk.start())
        if rng:
            out.append(rng)
        pos = brk.end()
    rng = _strip_range(text, pos, len(text))
    if rng:
        out.append(rng)
    return out


def _sentences(text: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p_start, p_end in _paragraphs(text):
        pos = p_start
        for end in _SENTENCE_END.finditer(text, p_start, p_end):
            rng = _strip_range(text, pos, end.end())
            if rng:
                out.append(rng)
            pos = end.end()
        rng = _strip_range(text, pos, p_end)
        if rng:
            out.append(rng)
    return out


def _token_groups(text: str, tokenizer: Any, span_tokens: int) -> list[tuple[int, int]]:
    if tokenizer is None:
        raise SpanError(
            "the 'tokens' span scheme groups tokens, so split_spans needs the tokenizer: "
            "split_spans(text, 'tokens', tokenizer=tok, span_tokens=32) (or use token_span_ids on a tokenized prompt)"
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    ids = token_span_ids(offsets, (0, len(text)), text, "tokens", span_tokens)
    groups: dict[int, list[int]] = {}
    for (a, b), sid in zip(offsets, ids):
        if sid >= 0:
            groups.setdefault(sid, [a, b])[1] = b
    out = [_strip_range(text, a, b) for a, b in groups.values()]
    return [r for r in out if r]


def split_spans(text: str, scheme: str, *, tokenizer: Any = None, span_tokens: int = 32) -> list[tuple[int, int]]:
    """Character ranges ``(start, end)`` of the spans of ``text`` under ``scheme``, in order.

    Ranges exclude surrounding whitespace; empty or whitespace-only text has no spans. The
    ``tokens`` scheme needs ``tokenizer`` (spans of ``span_tokens`` tokens each, no special tokens).
    """
    check_scheme(scheme, span_tokens)
    if not isinstance(text, str):
        raise SpanError(f"split_spans: text must be a string, got {type(text).__name__}")
    if scheme == "paragraph":
        return _paragraphs(text)
    if scheme == "sentence":
        return _sentences(text)
    return _token_groups(text, tokenizer, span_tokens)


def _anchor(text: str, start: int, end: int) -> int:
    """Position of a token's first non-space character (its start when it is only whitespace)."""
    for pos in range(start, end):
        if not text[pos].isspace():
            return pos
    return start


def token_span_ids(
    offsets: Sequence[Sequence[int]],
    content: tuple[int, int],
    text: str,
    scheme: str,
    span_tokens: int = 32,
    *,
    special: Sequence[bool] | None = None,
) -> list[int]:
    """Per token of a tokenized prompt, its span index ``0..P-1``, or -1 outside the content.

    offsets: the tokens' ``(start, end)`` character offsets in ``text`` (the prompt), e.g. from
        ``tokenizer(text, return_offsets_mapping=True)``.
    content: the ``(start, end)`` character range of the content inside ``text``.
    special: optional per-token flags of special tokens, which always get -1.

    A token belongs to the content when its first non-space character (its start, for a
    whitespace-only token) lies inside ``content``; zero-length tokens (BOS, specials with
    ``(0, 0)`` offsets) never do. A content token gets the span whose region holds that character,
    where region ``k`` runs from span ``k``'s start to span ``k+1``'s start (region 0 from the
    content start), so the whitespace between spans goes to the span before it. For ``tokens``,
    content tokens are numbered in groups of ``span_tokens``. Ids are renumbered so they run
    ``0..P-1`` without gaps (a span none of whose tokens starts in it is merged into the one
    before) and never decrease along the sequence.
    """
    check_scheme(scheme, span_tokens)
    c_start, c_end = int(content[0]), int(content[1])
    if not 0 <= c_start <= c_end <= len(text):
        raise SpanError(
            f"token_span_ids: content range {content} is not inside the prompt of {len(text)} characters; pass the "
            f"(start, end) of the content in the prompt text, e.g. format_messages(...).spans[0]"
        )
    if special is not None and len(special) != len(offsets):
        raise SpanError(
            f"token_span_ids: {len(offsets)} offsets but {len(special)} special-token flags; give one per token"
        )
    raw: list[int] = []
    for t, off in enumerate(offsets):
        start, end = max(0, int(off[0])), min(len(text), int(off[1]))
        anchor = _anchor(text, start, end)
        inside = end > start and c_start <= anchor < c_end and not (special is not None and special[t])
        raw.append(anchor if inside else -1)
    content_text = text[c_start:c_end]
    if not content_text.strip():
        return [-1] * len(raw)  # no content, no spans
    if scheme == "tokens":
        region = [-1 if a < 0 else 0 for a in raw]
        count = 0
        for t, a in enumerate(raw):
            if a >= 0:
                region[t] = count // span_tokens
                count += 1
    else:
        starts = [s for s, _ in split_spans(content_text, scheme)]
        bounds = [0, *starts[1:]]  # region k starts at span k's start; region 0 at the content start
        region = [-1 if a < 0 else bisect.bisect_right(bounds, a - c_start) - 1 for a in raw]
    out: list[int] = []
    last_region, current = None, -1
    for r in region:
        if r < 0:
            out.append(-1)
            continue
        if last_region is None or r > last_region:
            current += 1
            last_region = r
        out.append(current)
    return out
