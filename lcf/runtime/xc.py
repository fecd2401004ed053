"""Cross-context use of an adapter (LCF-X): the sharer reads a context, the receiver gets a question.

Mixed into :class:`lcf.runtime.Adapter`; needs only torch, transformers and safetensors::

    msg = adapter.send("Ravel Doskin lives in Lisbon.")          # LatentMessage (summary + header)
    data = msg.to_bytes(quantize="int8")                          # what travels
    adapter.receive(data, "Which city does Ravel Doskin live in?")

The sender needs the sharer, the receiver only the receiver: ``load_adapter(path, with_sharer=False)``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lcf.errors import LCFError
from lcf.models.kv import cat_views
from lcf.runtime.format import WEIGHTS_NAME, file_fingerprint
from lcf.runtime.messages import LatentMessage, MessageError
from lcf.runtime.models import check_finite_cache


class XCMixin:
    """Methods of :class:`lcf.runtime.Adapter` for adapters with a compressor."""

    config: dict[str, Any]
    communicator: Any
    sharer: Any
    receiver: Any
    folder: Path | None

    # -- facts ---------------------------------------------------------------------------------------
    @property
    def compressor(self):
        return self.communicator.compressor(0)

    @property
    def is_xc(self) -> bool:
        """True for an adapter that sends and receives cross-context messages (it has a compressor)."""
        return self.compressor is not None

    @property
    def is_cross_context(self) -> bool:
        """Deprecated spelling of :attr:`is_xc` (removed in the next release)."""
        import warnings

        warnings.warn("Adapter.is_cross_context is deprecated: use Adapter.is_xc", DeprecationWarning, stacklevel=2)
        return self.is_xc

    def _need_xc(self, what: str) -> None:
        if not self.is_xc:
            raise LCFError(f"{what} needs a cross-context adapter (one exported with a `compressor:`, e.g. trained "
                           f"from recipes/crosscontext.yaml); this one translates token-aligned caches: use generate()")

    def adapter_fingerprint(self) -> str:
        """Short sha256 of the adapter's weights file (messages name the adapter that made them)."""
        cached = self.__dict__.get("_weights_sha")
        if cached is None:
            if self.folder is None:
                raise LCFError("this adapter was not loaded from a folder, so it has no weights fingerprint")
            cached = self.__dict__["_weights_sha"] = file_fingerprint(self.folder / WEIGHTS_NAME)
        return cached

    def expected_header(self) -> dict[str, Any]:
        return {"sharer": self.config["sharer"]["fingerprint"], "receiver": self.config["receiver"]["fingerprint"],
                "adapter": self.adapter_fingerprint()}

    def max_context_tokens(self) -> int:
        """Longest sharer prompt (template included) the compressor summarises whole."""
        return self.compressor.context_limit(self.sharer.model.config if self.sharer is not None else None)

    def _device(self) -> torch.device:
        return next(self.communicator.parameters()).device

    # -- encoding ------------------------------------------------------------------------------------
    def encode_contexts(self, contexts: Sequence[str], *, spans: str | None = None,
                        span_tokens: int | None = None) -> dict[str, torch.Tensor]:
        """Left-padded sharer batch (prompt ids, mask, span ids) of ``contexts`` in the sharer's template;
        ``spans`` / ``span_tokens`` default to the scheme the compressor was trained with."""
        from lcf.data.xc.features import sharer_features
        from lcf.data.features import collate_prompts, pad_token_id

        self._need_xc("encode_contexts")
        if self.sharer is None:
            raise LCFError("this adapter was loaded without its sharer (with_sharer=False): it can receive latent "
                           "messages but not read contexts; load it with the sharer to send")
        templates = self.config.get("templates", {})
        args = self.compressor.init_args
        feats = [sharer_features(self.sharer.tokenizer, c, template=templates.get("sharer", "auto"),
                                 spans=spans or args.get("spans", "paragraph"),
                                 span_tokens=span_tokens or args.get("span_tokens", 32),
                                 max_tokens=self.max_context_tokens()) for c in contexts]
        # collate_prompts needs a receiver side: a 1-token placeholder that is dropped again
        rows = [f | {"receiver_prompt_ids": [0], "align_index": [0], "align_mask": [False]} for f in feats]
        batch = collate_prompts(rows, 0, pad_token_id(self.sharer.tokenizer))
        return {k: batch[k] for k in ("sharer_prompt_ids", "sharer_prompt_mask", "sharer_span_ids")}

    def encode_questions(self, questions: Sequence[str], own_contexts: Sequence[str] | None = None
                         ) -> dict[str, torch.Tensor]:
        """Left-padded receiver batch of questions (optionally each with the receiver's own context)."""
        from lcf.data.xc.features import receiver_features
        from lcf.data.features import collate_prompts, pad_token_id

        own = list(own_contexts) if own_contexts is not None else [""] * len(questions)
        template = self.config.get("templates", {}).get("receiver", "auto")
        feats = [receiver_features(self.receiver.tokenizer, q, o, template=template) for q, o in zip(questions, own)]
        rows = [f | {"sharer_prompt_ids": [0]} for f in feats]
        batch = collate_prompts(rows, pad_token_id(self.receiver.tokenizer), 0)
        return {k: batch[k] for k in ("receiver_prompt_ids", "receiver_prompt_mask", "align_index", "align_mask")}

    @torch.no_grad()
    def answer(self, questions: Sequence[str], own_contexts: Sequence[str] = (), *, max_new_tokens: int = 32,
               min_new_tokens: int = 0, sharer_view: Any = None) -> list[str]:
        """Greedy answers to ``questions``, each after the text the receiver holds itself (``own_contexts``),
        with ``sharer_view`` (a summary KVView, one row per question) fused in, or none (the baselines of
        ``lcf eval-xc``; :class:`~lcf.runtime.token_adapter.TokenAdapter` answers the same call)."""
        from lcf.data.features import pad_token_id

        own = list(own_contexts) or [""] * len(questions)
        batch = {k: v.to(self._device()) for k, v in self.encode_questions(list(questions), own).items()}
        extra = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
        new = self.communicator.generate(batch, fuse=sharer_view is not None,
                                         sharer_views=[sharer_view] if sharer_view is not None else None,
                                         max_new_tokens=max_new_tokens,
                                         pad_token_id=pad_token_id(self.receiver.tokenizer), **extra)
        return [t.strip() for t in self.receiver.tokenizer.batch_decode(new, skip_special_tokens=True)]

    # -- sending and receiving -----------------------------------------------------------------------
    @torch.no_grad()
    def summarise(self, contexts: Sequence[str], *, spans: str | None = None, span_tokens: int | None = None):
        """The compressor's summary KVView of a batch of contexts (what messages carry)."""
        batch = {k: v.to(self._device()) for k, v in self.encode_contexts(contexts, spans=spans,
                                                                            span_tokens=span_tokens).items()}
        return self.communicator.summaries(batch)[0]

    def send(self, context: str, *, spans: str | None = None, span_tokens: int | None = None) -> LatentMessage:
        """The latent message of one context: the summary plus a header naming sharer, receiver, adapter."""
        view = check_finite_cache(0, self.summarise([context], spans=spans, span_tokens=span_tokens))
        header = self.expected_header() | {"summary_len": view.seq_len}
        return LatentMessage.from_view(view, self.compressor.sharer_layers, header)

    def read_message(self, message: LatentMessage | bytes) -> LatentMessage:
        """Parse (bytes) and check a message against this adapter; raises :class:`MessageError`."""
        msg = LatentMessage.from_bytes(message) if isinstance(message, (bytes, bytearray)) else message
        if not isinstance(msg, LatentMessage):
            raise MessageError(f"expected a LatentMessage or its bytes, got {type(message).__name__}")
        specs = self.compressor.shapes.sharer
        n = self.compressor.summary_len
        msg.check(expected=self.expected_header(),
                  shapes={s: (specs[s].kv_heads, n, specs[s].head_dim) for s in self.compressor.sharer_layers})
        return msg

    @torch.no_grad()
    def receive(self, message: LatentMessage | bytes | Sequence[LatentMessage | bytes], question: str | Sequence[str],
                *, own_context: str | Sequence[str] = "", max_new_tokens: int = 32, fuse: bool = True,
                **generate_kwargs) -> str | list[str]:
        """Answer ``question`` with ``message`` fused in (one message per question, or one for all)."""
        from lcf.data.features import pad_token_id

        self._need_xc("receive")
        single = isinstance(question, str)
        questions = [question] if single else list(question)
        msgs = message if isinstance(message, (list, tuple)) else [message] * len(questions)
        if len(msgs) != len(questions):
            raise LCFError(f"receive: {len(msgs)} messages for {len(questions)} questions")
        own = [own_context] * len(questions) if isinstance(own_context, str) else list(own_context)
        views = [self.read_message(m).to_view(self.compressor.shapes.sharer, device=self._device()) for m in msgs]
        view = views[0] if len(views) == 1 else cat_views(views)
        batch = self.encode_questions(questions, own)
        from lcf.runtime.limits import check_batch_lengths

        check_batch_lengths(batch, self.receiver.model, [], new_tokens=max_new_tokens)
        batch = {k: v.to(self._device()) for k, v in batch.items()}
        new = self.communicator.generate(batch, fuse=fuse, sharer_views=[view], max_new_tokens=max_new_tokens,
                                         pad_token_id=pad_token_id(self.receiver.tokenizer), **generate_kwargs)
        texts = [t.strip() for t in self.receiver.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return texts[0] if single else texts

