"""Token alignment between two different tokenizers by maximal string coverage.

The receiver model fuses, at each of its token positions, the KV entries of one sharer position.
Which one? Both tokenizers split the same characters differently; each token covers a character
range of the text (its *offsets*). For a receiver token we count, for every sharer token, how many
of the receiver token's characters that sharer token covers, and pick the sharer token that covers
the most (``pick="longest"``, ties go to the earliest) or the first one that covers any
(``pick="first"``).

Only characters of *shared content* have a counterpart: when the two models see differently
formatted prompts (their own chat templates), ``segments`` list the blocks of identical content,
and characters outside them (template text) are covered by nothing. Receiver positions without a
counterpart — special tokens (BOS, ``<|im_start|>``), template tokens, zero-length tokens — get
``mask = False``.

Offsets come from fast (Rust ``tokenizers``) tokenizers' offset mappings; slow tokenizers are
rejected with an ``AlignmentError`` (offsets reconstructed by incremental decoding are unreliable
for byte-fallback and normalizing tokenizers). Quirks handled:

* byte-level BPE tokens holding part of a multi-byte character (emoji, CJK) report the whole
  character as their span, so several tokens may share a character; on the sharer side such a
  character is owned by the earliest token that claims it.
* SentencePiece-style tokens with a leading ``▁`` may or may not include the space in their span;
  either way a receiver token is matched by the characters it has in common with the sharer token.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from lcf.align.ahead import read_ahead
from lcf.align.alignment import TokenAlignment
from lcf.align.templates import TemplateName, format_messages, tokenizer_label
from lcf.errors import AlignmentError
from lcf.registry import token_aligners

Pick = Literal["longest", "first"]
Segment = tuple[int, int, int]  # (receiver_char_start, sharer_char_start, length)


# -- encoding ------------------------------------------------------------------------------------
def encode_with_offsets(tokenizer: Any, text: str, add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (ids (T,), offsets (T, 2), special (T,) bool) of ``text``."""
    if not getattr(tokenizer, "is_fast", False):
        raise AlignmentError(
            f"token alignment needs character offsets, which only fast tokenizers provide; "
            f"{tokenizer_label(tokenizer)} is a slow tokenizer. Load it with "
            f"AutoTokenizer.from_pretrained(..., use_fast=True) (convert it with the `tokenizers` library if needed)."
        )
    enc = tokenizer(
        text, add_special_tokens=add_special_tokens, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64).reshape(-1)
    offsets = np.clip(np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2), 0, len(text))
    special = np.asarray(enc.get("special_tokens_mask") or np.zeros(len(ids)), dtype=bool).reshape(-1)
    # Specials written in the text are not flagged by special_tokens_mask. The unknown token is
    # not treated as special: it stands for real characters of the text.
    unk = getattr(tokenizer, "unk_token_id", None)
    special_ids = [i for i in (getattr(tokenizer, "all_special_ids", None) or []) if i != unk]
    if special_ids:
        special |= np.isin(ids, special_ids)
    return ids, offsets, special


def _expand(offsets: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten token spans into (token index, character position) pairs for usable tokens."""
    idx = np.flatnonzero(usable)
    starts = offsets[idx, 0]
    lengths = np.maximum(offsets[idx, 1] - starts, 0)
    tok = np.repeat(idx, lengths)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    chars = np.repeat(starts, lengths) + np.arange(len(tok)) - first
    return tok, chars


def check_segments(receiver_text: str, sharer_text: str, segments: Sequence[Sequence[int]]) -> list[Segment]:
    """Validate ``(receiver_start, sharer_start, length)`` blocks: in bounds, identical, no overlap."""
    out: list[Segment] = []
    for k, seg in enumerate(segments):
        if len(seg) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in seg):
            raise AlignmentError(
                f"segments[{k}] = {seg!r}: expected (receiver_char_start, sharer_char_start, length) "
                f"of non-negative ints"
            )
        rs, ss, n = (int(v) for v in seg)
        if rs + n > len(receiver_text) or ss + n > len(sharer_text):
            raise AlignmentError(
                f"segments[{k}] = {seg!r} runs past the end of the receiver text ({len(receiver_text)} chars) "
                f"or the sharer text ({len(sharer_text)} chars)"
            )
        if receiver_text[rs:rs + n] != sharer_text[ss:ss + n]:
            raise AlignmentError(
                f"segments[{k}] = {seg!r} pairs different content: receiver {receiver_text[rs:rs + n][:40]!r} vs "
                f"sharer {sharer_text[ss:ss + n][:40]!r}; segments must cover identical text in both"
            )
        out.append((rs, ss, n))
    ordered = sorted(out)
    for a, b in zip(ordered, ordered[1:]):
        if a[0] + a[2] > b[0]:
            raise AlignmentError(f"segments {a} and {b} overlap in the receiver text; each character may map once")
    return out


# -- core ------------------------------------------------------------------------------------------
def align_texts(
    receiver_tokenizer: Any,
    sharer_tokenizer: Any,
    receiver_text: str,
    sharer_text: str | None = None,
    segments: Sequence[Sequence[int]] | None = None,
    *,
    add_special_tokens: bool | tuple[bool, bool] = True,
    pick: Pick = "longest",
    min_coverage: float = 0.0,
) -> TokenAlignment:
    """Align the receiver tokenization of ``receiver_text`` to the sharer tokenization of ``sharer_text``.

    ``sharer_text`` defaults to ``receiver_text``. ``segments`` lists blocks of identical content
    ``(receiver_char_start, sharer_char_start, length)``; by default the whole text is one block,
    which requires the two texts to be equal. ``add_special_tokens`` is passed to both tokenizers,
    or given per side as ``(receiver, sharer)``. Receiver tokens covered less than
    ``min_coverage`` are masked.
    """
    if pick not in ("longest", "first"):
        raise AlignmentError(f"pick must be 'longest' or 'first', got {pick!r}")
    sharer_text = receiver_text if sharer_text is None else sharer_text
    if not isinstance(receiver_text, str) or not isinstance(sharer_text, str):
        raise AlignmentError("receiver_text and sharer_text must be strings")
    if segments is None:
        if sharer_text != receiver_text:
            raise AlignmentError(
                "receiver_text and sharer_text differ but no segments were given: pass "
                "segments=[(receiver_char_start, sharer_char_start, length), ...] for the content they share, "
                "or use align_messages() to format both prompts and align their message contents."
            )
        segments = [(0, 0, len(receiver_text))]
    segs = check_segments(receiver_text, sharer_text, segments)
    r_specials, s_specials = (
        add_special_tokens if isinstance(add_special_tokens, tuple) else (add_special_tokens, add_special_tokens)
    )
    r_ids, r_off, r_special = encode_with_offsets(receiver_tokenizer, receiver_text, r_specials)
    s_ids, s_off, s_special = encode_with_offsets(sharer_tokenizer, sharer_text, s_specials)
    return _align_encoded(
        r_ids, r_off, r_special, s_ids, s_off, s_special, segs, len(receiver_text), len(sharer_text), pick,
        float(min_coverage), receiver_text, sharer_text,
    )


def _align_encoded(
    r_ids: np.ndarray, r_off: np.ndarray, r_special: np.ndarray,
    s_ids: np.ndarray, s_off: np.ndarray, s_special: np.ndarray,
    segments: list[Segment], r_len: int, s_len: int, pick: Pick, min_coverage: float,
    receiver_text: str, sharer_text: str,
) -> TokenAlignment:
    n_r, n_s = len(r_ids), len(s_ids)
    # Owner of every sharer character: the earliest non-special sharer token whose span holds it.
    none = np.iinfo(np.int64).max
    s_owner = np.full(s_len, none, dtype=np.int64)
    s_tok, s_chars = _expand(s_off, ~s_special)
    np.minimum.at(s_owner, s_chars, s_tok)
    s_owner[s_owner == none] = -1
    # Owner seen from every receiver character (-1 outside the shared segments).
    r_owner = np.full(r_len, -1, dtype=np.int64)
    for rs, ss, n in segments:
        r_owner[rs:rs + n] = s_owner[ss:ss + n]
    # Count, per receiver token, the characters each sharer token covers.
    r_len_tok = np.maximum(r_off[:, 1] - r_off[:, 0], 0)
    r_tok, r_chars = _expand(r_off, ~r_special)
    owners = r_owner[r_chars]
    keep = owners >= 0
    keys = r_tok[keep] * max(n_s, 1) + owners[keep]
    uniq, counts = np.unique(keys, return_counts=True)  # sorted by (receiver token, sharer token)
    tok_of, sharer_of = uniq // max(n_s, 1), uniq % max(n_s, 1)
    if pick == "longest":  # most characters first, earliest sharer token on ties
        order = np.lexsort((sharer_of, -counts, tok_of))
        tok_of, sharer_of, counts = tok_of[order], sharer_of[order], counts[order]
    first = np.ones(len(tok_of), dtype=bool)
    first[1:] = tok_of[1:] != tok_of[:-1]
    chosen_tok, chosen_sharer, chosen_count = tok_of[first], sharer_of[first], counts[first]

    sharer_index = np.zeros(n_r, dtype=np.int64)
    coverage = np.zeros(n_r, dtype=np.float32)
    sharer_index[chosen_tok] = chosen_sharer
    coverage[chosen_tok] = chosen_count / r_len_tok[chosen_tok]
    mask = coverage > 0
    if min_coverage > 0:
        mask &= coverage >= min_coverage
    sharer_index[~mask] = 0
    return TokenAlignment(
        receiver_ids=torch.from_numpy(r_ids),
        sharer_ids=torch.from_numpy(s_ids),
        sharer_index=torch.from_numpy(sharer_index),
        mask=torch.from_numpy(mask),
        coverage=torch.from_numpy(coverage),
        receiver_offsets=torch.from_numpy(r_off),
        sharer_offsets=torch.from_numpy(s_off),
        receiver_text=receiver_text,
        sharer_text=sharer_text,
    )


def auto_special_tokens(tokenizer: Any, text: str) -> bool:
    """Add special tokens (BOS) unless the formatted text already starts with the BOS token."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def message_segments(receiver_prompt: Any, sharer_prompt: Any) -> list[Segment]:
    """Segments pairing the content spans of two ``FormattedPrompt`` of the same messages.

    When one template rewrote a content (e.g. stripped it), the shorter form is located inside
    the longer one; content that differs otherwise raises ``AlignmentError``.
    """
    segments: list[Segment] = []
    for i, ((ra, rb), (sa, sb)) in enumerate(zip(receiver_prompt.spans, sharer_prompt.spans)):
        rc, sc = receiver_prompt.text[ra:rb], sharer_prompt.text[sa:sb]
        if rc == sc:
            segments.append((ra, sa, rb - ra))
        elif sc in rc:
            segments.append((ra + rc.find(sc), sa, len(sc)))
        elif rc in sc:
            segments.append((ra, sa + sc.find(rc), len(rc)))
        else:
            raise AlignmentError(
                f"message {i}: the two templates render its content differently ({rc[:40]!r} vs {sc[:40]!r}); "
                f"only content that appears identically in both prompts can be aligned"
            )
    return segments


def align_messages(
    receiver_tokenizer: Any,
    sharer_tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    receiver_template: TemplateName = "auto",
    sharer_template: TemplateName = "auto",
    add_generation_prompt: bool = True,
    pick: Pick = "longest",
    min_coverage: float = 0.0,
) -> TokenAlignment:
    """Format ``messages`` with each model's own template and align the message contents only.

    Template text (role headers, ``<|im_start|>``, ...) has no counterpart and is masked. Special
    tokens are added unless the formatted text already starts with the tokenizer's BOS token.
    """
    r_prompt = format_messages(receiver_tokenizer, messages, receiver_template, add_generation_prompt)
    s_prompt = format_messages(sharer_tokenizer, messages, sharer_template, add_generation_prompt)
    return align_texts(
        receiver_tokenizer, sharer_tokenizer, r_prompt.text, s_prompt.text, message_segments(r_prompt, s_prompt),
        add_special_tokens=(
            auto_special_tokens(receiver_tokenizer, r_prompt.text),
            auto_special_tokens(sharer_tokenizer, s_prompt.text),
        ),
        pick=pick, min_coverage=min_coverage,
    )


@token_aligners.register("maximal_coverage")
class MaximalCoverageAligner:
    """Token aligner: each receiver token reads the sharer token covering most of its characters.

    pick: ``"longest"`` — the sharer token covering the most characters (earliest on ties);
        ``"first"`` — the first sharer token covering any character of the receiver token.
    min_coverage: receiver tokens whose chosen sharer token covers a smaller fraction of their
        characters are masked (no fusion).
    read_ahead: each aligned receiver position reads the sharer token chosen for the aligned receiver
        position ``read_ahead`` places later (:func:`lcf.align.ahead.read_ahead`); 0 is plain coverage.
    """

    def __init__(self, pick: Pick = "longest", min_coverage: float = 0.0, read_ahead: int = 0) -> None:
        if pick not in ("longest", "first"):
            raise AlignmentError(f"MaximalCoverageAligner: pick must be 'longest' or 'first', got {pick!r}")
        if not 0.0 <= float(min_coverage) <= 1.0:
            raise AlignmentError(f"MaximalCoverageAligner: min_coverage must lie in [0, 1], got {min_coverage!r}")
        if isinstance(read_ahead, bool) or not isinstance(read_ahead, int) or read_ahead < 0:
            raise AlignmentError(f"MaximalCoverageAligner: read_ahead must be an integer >= 0 (0: each position "
                                 f"reads its own token's sharer token), got {read_ahead!r}")
        self.pick: Pick = pick
        self.min_coverage = float(min_coverage)
        self.read_ahead = read_ahead

    def __repr__(self) -> str:
        ahead = f", read_ahead={self.read_ahead}" if self.read_ahead else ""
        return f"MaximalCoverageAligner(pick={self.pick!r}, min_coverage={self.min_coverage}{ahead})"

    def align_texts(
        self,
        receiver_tokenizer: Any,
        sharer_tokenizer: Any,
        receiver_text: str,
        sharer_text: str | None = None,
        segments: Sequence[Sequence[int]] | None = None,
        *,
        add_special_tokens: bool | tuple[bool, bool] = True,
    ) -> TokenAlignment:
        """``align_texts`` with this aligner's settings."""
        return read_ahead(align_texts(
            receiver_tokenizer, sharer_tokenizer, receiver_text, sharer_text, segments,
            add_special_tokens=add_special_tokens, pick=self.pick, min_coverage=self.min_coverage,
        ), self.read_ahead)

    def align_messages(
        self,
        receiver_tokenizer: Any,
        sharer_tokenizer: Any,
        messages: Sequence[Mapping[str, Any]],
        *,
        receiver_template: TemplateName = "auto",
        sharer_template: TemplateName = "auto",
        add_generation_prompt: bool = True,
    ) -> TokenAlignment:
        """``align_messages`` with this aligner's settings."""
        return read_ahead(align_messages(
            receiver_tokenizer, sharer_tokenizer, messages, receiver_template=receiver_template,
            sharer_template=sharer_template, add_generation_prompt=add_generation_prompt,
            pick=self.pick, min_coverage=self.min_coverage,
        ), self.read_ahead)
