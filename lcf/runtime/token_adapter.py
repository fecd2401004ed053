"""Adapters that send the sharer's cache token by token (:mod:`lcf.runtime.token_kv`): load, send, receive
(trained by ``lcf train`` with translator ``token_map``, written by ``lcf export``). :func:`lcf.runtime.load_adapter` returns a :class:`TokenAdapter` for such a folder, so ``lcf send`` /
``lcf receive`` and code written for LCF-X adapters use them unchanged::

    data = load_adapter("kv-adapter").send(context).to_bytes(quantize="int8")
    load_adapter("kv-adapter", with_sharer=False).receive(data, "Which city does Ravel Doskin live in?")

The receiver never sees the context: it builds its prompt around a placeholder, keeps the template's
tokens before and after it, and puts the message's T translated tokens in between (after ``own_context``,
text it holds itself, when one is given).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lcf.errors import LCFError
from lcf.models.kv import prefill
from lcf.models.placement import decode_into_cache, layer_kinds
from lcf.models.rows import Prepared, context_span, greedy, layer_rope, question_only, sharer_rows, stop_ids
from lcf.runtime.format import WEIGHTS_NAME, AdapterError, file_fingerprint
from lcf.runtime.kinds import PER_TOKEN
from lcf.runtime.limits import LengthError, check_length
from lcf.runtime.messages import MessageError
from lcf.runtime.token_kv import PLACEHOLDER, PROBE_QUESTION, LowRank, TokenMessage


@dataclass
class TokenAdapter:
    """A per-token adapter with its models; ``sharer`` is None in a receiving process, ``receiver`` None in a
    sending one (then ``receiver_tokenizer`` still tokenizes the context the receiver's way)."""

    config: dict[str, Any]
    map: LowRank
    sharer: Any
    receiver: Any
    receiver_tokenizer: Any
    folder: Path

    is_xc = True  # every per-token adapter sends cross-context messages (Adapter.is_xc)
    kind = PER_TOKEN  # lcf.runtime.kinds

    @property
    def is_cross_context(self) -> bool:
        """Deprecated spelling of :attr:`is_xc` (removed in the next release)."""
        import warnings

        warnings.warn("TokenAdapter.is_cross_context is deprecated: use TokenAdapter.is_xc", DeprecationWarning,
                      stacklevel=2)
        return self.is_xc

    def __post_init__(self) -> None:
        self._ropes = {role: layer_rope(m.model) for role, m in (("sharer", self.sharer), ("receiver", self.receiver))
                       if m is not None}
        self._heads: dict[tuple[int, ...], Any] = {}
        self._kinds = layer_kinds(self.receiver.model) if self.receiver is not None else []
        self._fingerprint = file_fingerprint(self.folder / WEIGHTS_NAME)

    @property
    def templates(self) -> dict[str, str]:
        return self.config.get("templates") or {}

    def expected_header(self) -> dict[str, Any]:
        return {"sharer": self.config["sharer"]["fingerprint"], "receiver": self.config["receiver"]["fingerprint"],
                "adapter": self._fingerprint, "rank": self.map.rank}

    def _device(self) -> torch.device:
        return self.map.down.device

    def max_context_tokens(self) -> int:
        """Longest context a message carries: the smaller ``max_position_embeddings`` of the two models (a
        sharer's sliding windows do not limit it: its prompt is prefilled in chunks, every position kept)."""
        limits = []
        for m in (self.sharer, self.receiver):
            cfg = m.model.config if m is not None else None
            cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
            if getattr(cfg, "max_position_embeddings", None):
                limits.append(int(cfg.max_position_embeddings))
        return min(limits) if limits else 1 << 30

    # -- sending -------------------------------------------------------------------------------------
    @torch.no_grad()
    def send(self, context: str, *, spans: str | None = None, **unused: Any) -> TokenMessage:
        """The message of one context: a code of ``rank`` numbers per receiver token of it."""
        if self.sharer is None:
            raise LCFError("this adapter was loaded without its sharer (with_sharer=False): it can receive messages "
                           "but not read contexts; load it with the sharer to send")
        if spans is not None:
            raise LCFError("per-token messages have no spans (one code per token); drop --spans / spans=")
        template = self.templates.get("receiver", "auto")
        span = context_span(self.receiver_tokenizer, PROBE_QUESTION, context, template)
        if span.b - span.a > self.max_context_tokens():  # before the sharer reads it
            raise LengthError(f"the context has {span.b - span.a} receiver tokens, more than the "
                              f"{self.max_context_tokens()} positions the two models attend to; nothing was computed. "
                              f"Send it in parts, or shorten it (lcf.runtime.limits.truncate_text)")
        probe = context_span(self.receiver_tokenizer, PROBE_QUESTION, PLACEHOLDER, template)
        if span.ids[:span.a] != probe.ids[:probe.a] or span.ids[span.b:] != probe.ids[probe.b:]:
            raise MessageError("the receiver's template tokens next to this context differ from those next to a "
                               "placeholder (its first or last characters merge with the template's), so the "
                               "receiver could not rebuild its prompt; strip or end the context with punctuation")
        x = sharer_rows(self.sharer.model, self.sharer.tokenizer, self._ropes["sharer"], self.receiver_tokenizer,
                        span, context, self.templates.get("sharer", "auto"))
        if not bool(torch.isfinite(x).all()):
            raise MessageError(f"the sharer's cache of this context holds NaN or infinite values (dtype "
                               f"{str(x.dtype)[6:]}): the sharer overflows in this dtype; load the adapter with "
                               f"dtype='float32'")
        return TokenMessage(self.map.encode(x.to(self._device())), self.expected_header() | {"head": span.a})

    # -- receiving -----------------------------------------------------------------------------------
    def read_message(self, message: TokenMessage | bytes) -> TokenMessage:
        """Parse (bytes) and check a message against this adapter; raises :class:`MessageError`."""
        msg = TokenMessage.from_bytes(message) if isinstance(message, (bytes, bytearray)) else message
        if not isinstance(msg, TokenMessage):
            raise MessageError(f"expected a TokenMessage or its bytes, got {type(message).__name__}")
        for role, want in self.expected_header().items():
            if msg.header.get(role) != want:
                raise MessageError(f"this message was made for {role} {msg.header.get(role)!r}, but this side uses "
                                   f"{want!r}: it comes from another model pair or adapter; send it with the "
                                   f"adapter the receiver has loaded")
        if msg.codes.dim() != 2 or msg.codes.shape[1] != self.map.rank or not bool(torch.isfinite(msg.codes).all()):
            raise MessageError(f"the message's codes have shape {tuple(msg.codes.shape)} or non-finite values; this "
                               f"adapter expects finite (tokens, {self.map.rank})")
        return msg

    @torch.no_grad()
    def head_cache(self, ids: Sequence[int]) -> Any:
        """The receiver's cache of its template head (the tokens before the context), prefilled once per
        distinct head and kept (a few heads at most): every message read in one template shares it. The
        returned view is read, never written, by :meth:`place`."""
        key = tuple(ids)
        if key not in self._heads:
            model = self.receiver.model
            if len(self._heads) >= 4:
                self._heads.pop(next(iter(self._heads)))
            self._heads[key] = prefill(model, torch.tensor([key], device=model.device))
        return self._heads[key]

    @torch.no_grad()
    def place(self, message: TokenMessage, head: Prepared) -> tuple[Any, int]:
        """The receiver's cache: ``head`` (its template before the context, prefilled) then the message's codes
        decoded into every layer's K/V at the context's positions (in chunks, into one preallocated cache:
        :func:`lcf.models.placement.decode_into_cache`); returns it and the position where the tail starts."""
        return decode_into_cache(self.map.decode, message.codes.to(self._device()), head, self._ropes["receiver"],
                                 self._kinds)

    @torch.no_grad()
    def receive(self, message: TokenMessage | bytes | Sequence[TokenMessage | bytes], question: str | Sequence[str],
                *, own_context: str | Sequence[str] = "", max_new_tokens: int = 32, **unused: Any) -> str | list[str]:
        """Answer ``question`` (or each of a list) reading the message's tokens as its context; ``own_context``
        (one text, or one per question) is text the receiver holds itself, read before the message's tokens."""
        if self.receiver is None:
            raise LCFError("this adapter was loaded without its receiver; load it with the receiver to answer")
        single = isinstance(question, str)
        questions = [question] if single else list(question)
        msgs = list(message) if isinstance(message, (list, tuple)) else [message] * len(questions)
        owns = list(own_context) if isinstance(own_context, (list, tuple)) else [own_context] * len(questions)
        if len(msgs) != len(questions) or len(owns) != len(questions):
            raise LCFError(f"receive: {len(msgs)} messages and {len(owns)} own contexts for {len(questions)} "
                           f"questions; give one of each per question (or a single one for all)")
        model, tok = self.receiver.model, self.receiver.tokenizer
        template = self.templates.get("receiver", "auto")
        views, tails, starts = [], [], []
        for m, q, own in zip(msgs, questions, owns):
            msg = self.read_message(m)
            span = context_span(tok, q, PLACEHOLDER, template)
            if span.a != msg.header.get("head"):
                raise MessageError(f"the receiver's prompt puts the context at token {span.a}, the sender's at "
                                   f"{msg.header.get('head')}: the two sides use different receiver templates")
            if own.strip():
                span = context_span(tok, q, PLACEHOLDER, template, own)
            check_length(f"receiver prompt {len(views)} (its own text, the message's {len(msg.codes)} tokens and the "
                         f"question)", len(span.ids) + len(msg.codes), model, new_tokens=max_new_tokens)
            ids = torch.tensor([span.ids], device=model.device)
            p = Prepared(self.head_cache(span.ids[:span.a]), span.a, span.a, ids[0, span.b:])
            view, start = self.place(msg, p)
            views.append(view)
            tails.append(p.tail)
            starts.append(start)
        new = greedy(model, views, tails, starts, max_new_tokens, stop_ids(model, tok))
        texts = [tok.decode(t, skip_special_tokens=True).strip() for t in new]
        return texts[0] if single else texts


    @torch.no_grad()
    def answer(self, questions: Sequence[str], own_contexts: Sequence[str] = (), *, max_new_tokens: int = 32,
               min_new_tokens: int = 0, sharer_view: Any = None) -> list[str]:
        """The receiver without a message: each question after the text it holds itself (``own_contexts``,
        one per question; empty for none), in the receiver's template (the baselines of ``lcf eval-xc``). A
        per-token adapter's messages arrive through :meth:`receive`: ``sharer_view`` must be None, and greedy
        answers stop at the end of turn (``min_new_tokens`` 0)."""
        if sharer_view is not None or min_new_tokens:
            raise LCFError("a per-token adapter answers without a summary view and without min_new_tokens; send "
                           "its message with send() and read it with receive()")
        if self.receiver is None:
            raise LCFError("this adapter was loaded without its receiver; load it with the receiver to answer")
        owns = list(own_contexts) or [""] * len(questions)
        if len(owns) != len(questions):
            raise LCFError(f"answer: {len(owns)} own contexts for {len(questions)} questions; give one per question")
        model, tok = self.receiver.model, self.receiver.tokenizer
        views, starts, tails = zip(*(question_only(model, tok, q, own, self.templates.get("receiver", "auto"))
                                     for q, own in zip(questions, owns)))
        new = greedy(model, views, tails, starts, max_new_tokens, stop_ids(model, tok))
        return [tok.decode(t, skip_special_tokens=True).strip() for t in new]


def load_token_adapter(folder: Path, cfg: dict[str, Any], *, sharer: Any, receiver: Any, device: str | None,
                       dtype: str | None, check_fingerprints: bool, with_sharer: bool,
                       with_receiver: bool) -> TokenAdapter:
    """:func:`lcf.runtime.load_adapter` for per-token adapters (strict about tensors and models)."""
    from lcf.models.fingerprint import tokenizer_fingerprint
    from lcf.models.loading import load_tokenizer
    from lcf.runtime.format import load_weights
    from lcf.runtime.models import as_loaded, check_fingerprint

    low = LowRank.from_state(load_weights(folder), str(folder / WEIGHTS_NAME))
    shapes = cfg.get("shapes") or {}
    got = {"sharer_row": low.down.shape[0], "receiver_row": low.up.shape[1]}
    if any(shapes.get(k) != v for k, v in got.items()) or cfg["translator"].get("args", {}).get("rank") != low.rank:
        raise AdapterError(f"{folder}: the tensors (rows {got}, rank {low.rank}) do not match the config (shapes "
                           f"{shapes}, args {cfg['translator'].get('args')}); re-export the adapter")
    if not (with_sharer or with_receiver):
        raise AdapterError("with_sharer=False and with_receiver=False leave nothing to run; keep one side")
    s = as_loaded(sharer, cfg["sharer"]["name"], dtype) if with_sharer else None
    r = as_loaded(receiver, cfg["receiver"]["name"], dtype) if with_receiver else None
    r_tok = r.tokenizer if r is not None else load_tokenizer(cfg["receiver"]["name"])
    if check_fingerprints:
        if s is not None:
            check_fingerprint("sharer", cfg["sharer"], s)
        if r is not None:
            check_fingerprint("receiver", cfg["receiver"], r)
        elif tokenizer_fingerprint(r_tok) != cfg["receiver"]["fingerprint"].get("tokenizer"):
            raise AdapterError(f"the receiver tokenizer of {cfg['receiver']['name']!r} differs from the one this "
                               f"adapter was trained with; load the receiver the adapter names")
    for m in (s, r):
        if m is not None and device:
            m.model.to(device)
    low = low.to(device) if device else low
    return TokenAdapter(cfg, low.eval(), s, r, r_tok, folder)
