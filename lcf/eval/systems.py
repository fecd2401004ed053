"""Systems compared by the evaluation harness, all answering the same zero-shot user messages.

Every system scores multiple-choice options by log-likelihood and answers by greedy generation:

    system.score_options(prompts, options)   # [[sum log p(option tokens | prompt), ...] per item]
    system.generate(prompts, max_new_tokens) # greedy answers

A prompt is one user message, formatted with the answering model's own template exactly as
:meth:`lcf.runtime.Adapter.encode` does. An option is scored as the sum of the log-probabilities of
its tokens (``tokenizer(option, add_special_tokens=False)``) placed right after the prompt — no
end-of-turn token is appended. Rows are one (item, option) pair each (the option tokens are the
row's ``response_ids``); items are scored ``batch_size`` at a time, and an item's prompt is
prefilled once, its cache shared by the rows of all its options (the same numbers as one
:class:`~lcf.communicator.Communicator` forward per row, at a fraction of the cost).

* :class:`ReceiverAlone` — the receiver on its own (an adapter's communicator with ``fuse=False``,
  or a plain :class:`~lcf.models.loading.LoadedModel`).
* :class:`SharerAlone` — the sharer on its own, with its own template (plain for Gemma-3).
* :class:`AdapterSystem` — receiver + sharer cache fused through a trained adapter, or one of its
  controls: ``"zero"`` fuses an all-zero sharer cache through the same adapter; ``"mismatched"``
  fuses the sharer cache of a *different* item (see :func:`mismatch_partner`).

``system.score_continuations(contexts, continuations)`` scores raw text instead, the way
lm-evaluation-harness does (no template; see :mod:`lcf.eval.scoring`), and ``generate(..., raw=True)``
continues raw text.

New systems (text-to-text relay, LoRA-tuned receiver) subclass :class:`System` and implement
``_encode`` (per-item prompt features), ``_encode_raw`` (the same from raw contexts), ``_score_items``
(a batch of items and their options' token ids -> log-likelihoods) and ``_generate`` (a batch of
prompts -> texts); batching and option tokenisation come for free. A system answering with a plain
causal LM can reuse :class:`PlainModel`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from lcf.align.templates import TemplateName, format_messages
from lcf.align.tokens import auto_special_tokens
from lcf.communicator import SharerTransform, positions_from_mask
from lcf.data.features import collate_prompts, pad_token_id, prompt_features
from lcf.errors import LCFError
from lcf.eval.controls import control_features, mismatch_partner, zero_sharer_cache  # noqa: F401 (re-exported)
from lcf.eval.scoring import (context_ids, continuation_ids, expand_view, move_trailing_space, option_rows,
                              row_log_likelihood)
from lcf.models.kv import KVView, cache_kwargs, prefill
from lcf.models.loading import LoadedModel
from lcf.runtime.receiver_lora import without_receiver_lora

Control = Literal["none", "zero", "mismatched"]
CONTROLS: tuple[str, ...] = ("none", "zero", "mismatched")
Feature = dict[str, Any]
OnBatch = Callable[[int], None]


class System(ABC):
    """Something that answers prompts. Subclasses set ``name``, ``kind``, ``tokenizer`` (that of the
    model whose log-likelihoods are scored) and implement ``_encode``, ``_score_items`` and ``_generate``."""

    name: str = "system"
    kind: str = "system"
    tokenizer: Any = None
    #: whether batch-1 latency means something for this system (False: the harness skips timing it)
    timed: bool = True
    #: a model this system runs without the receiver LoRA a composed adapter hooked onto it (the receiver alone)
    bare_model: Any = None

    @property
    def num_parameters(self) -> int:
        """Trainable (adapter) parameters this system adds to frozen models; 0 for plain models."""
        return 0

    @property
    def size_bytes(self) -> int:
        """Bytes of the adapter weights; 0 for plain models."""
        return 0

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Device the answering model runs on (for timing)."""

    def describe(self) -> dict[str, Any]:
        """JSON-safe facts for the report."""
        return {"name": self.name, "kind": self.kind, "num_parameters": self.num_parameters,
                "size_bytes": self.size_bytes, "adapter": None}

    # -- to implement ----------------------------------------------------------------------------
    @abstractmethod
    def _encode(self, prompts: Sequence[str]) -> list[Feature]:
        """Prompt features of every item (the row scored for item ``i`` is built from ``features[i]``)."""

    def _encode_raw(self, contexts: Sequence[str]) -> list[Feature]:
        """Features of raw contexts (no template; see :func:`lcf.eval.scoring.context_ids`)."""
        raise LCFError(f"{self.name} ({type(self).__name__}) cannot read raw text prompts; use a chat-format "
                       f"evaluation (`lcf eval --format chat`) for this system")

    @abstractmethod
    def _score_items(self, features: list[Feature], options: list[list[list[int]]]) -> list[list[float]]:
        """``out[i][j]``: sum log-likelihood of the token ids ``options[i][j]`` after prompt ``features[i]``."""

    @abstractmethod
    def _generate(self, features: list[Feature], max_new_tokens: int, min_new_tokens: int) -> list[str]:
        """Greedy answers to a batch of prompt features."""

    def length_limits(self) -> dict[str, Any]:
        """Feature key -> the model that reads those ids (its ``max_position_embeddings`` bounds them)."""
        return {}

    def check_lengths(self, features: list[Feature], new_tokens: int = 0) -> None:
        """Refuse, before any compute, an item whose prompt (plus ``new_tokens`` answer or option tokens on
        the first key's model) is longer than a model attends to."""
        from lcf.runtime.limits import check_length

        for n, (key, model) in enumerate(self.length_limits().items()):
            for i, f in enumerate(features):
                check_length(f"{self.name} prompt of item {i} ({key})", len(f.get(key) or ()), model,
                             new_tokens=new_tokens if n == 0 else 0,
                             options="Leave such items out (another --split or --limit, or shorter task items), or "
                                     "evaluate a model that attends to more positions.")

    # -- public API ------------------------------------------------------------------------------
    def option_ids(self, option: str) -> list[int]:
        """Token ids of an option continuation (no special tokens, no end-of-turn)."""
        ids = list(self.tokenizer(option, add_special_tokens=False)["input_ids"])
        if not ids:
            raise LCFError(f"{self.name}: option {option!r} tokenizes to no tokens; it cannot be scored")
        return ids

    @torch.no_grad()
    def score_options(self, prompts: Sequence[str], options: Sequence[Sequence[str]], *, batch_size: int = 8,
                      on_batch: OnBatch | None = None) -> list[list[float]]:
        """``out[i][j]`` = sum log p(tokens of ``options[i][j]`` | prompt ``i``); ``batch_size`` items
        (all their options) per forward pass; ``on_batch(rows)`` after each."""
        if len(prompts) != len(options):
            raise LCFError(f"score_options: {len(prompts)} prompts but {len(options)} option lists")
        features = self._encode(list(prompts))
        ids = [[self.option_ids(o) for o in opts] for opts in options]
        self.check_lengths(features, max((len(i) for opts in ids for i in opts), default=0))
        return self._score_batches(features, ids, batch_size, on_batch)

    @torch.no_grad()
    def score_continuations(self, contexts: Sequence[str], continuations: Sequence[Sequence[str]], *,
                            batch_size: int = 8, on_batch: OnBatch | None = None) -> list[list[float]]:
        """``out[i][j]`` = sum log p(``continuations[i][j]`` | raw ``contexts[i]``), encoded as
        lm-evaluation-harness encodes a (context, continuation) request (:mod:`lcf.eval.scoring`)."""
        if len(contexts) != len(continuations):
            raise LCFError(f"score_continuations: {len(contexts)} contexts but {len(continuations)} continuation lists")
        pairs = [[move_trailing_space(c, x) for x in conts] for c, conts in zip(contexts, continuations)]
        stems = [p[0][0] if p else c.rstrip() for p, c in zip(pairs, contexts)]
        ids = [[continuation_ids(self.tokenizer, c, x) for c, x in p] for p in pairs]
        features = self._encode_raw(stems)
        self.check_lengths(features, max((len(i) for opts in ids for i in opts), default=0))
        return self._score_batches(features, ids, batch_size, on_batch)

    def _score_batches(self, features: list[Feature], ids: list[list[list[int]]], batch_size: int,
                       on_batch: OnBatch | None) -> list[list[float]]:
        out: list[list[float]] = []
        with without_receiver_lora(self.bare_model):
            for start in range(0, len(features), batch_size):
                chunk = ids[start:start + batch_size]
                out.extend(self._score_items(features[start:start + batch_size], chunk))
                if on_batch:
                    on_batch(sum(len(o) for o in chunk))
        return out

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, *, batch_size: int = 8,
                 min_new_tokens: int = 0, on_batch: OnBatch | None = None, raw: bool = False) -> list[str]:
        """Greedy answers (special tokens dropped, stripped). ``min_new_tokens`` forces a length (timing).
        ``raw``: the prompts are raw text continued as is (no template), as in lm-eval."""
        features = self._encode_raw(list(prompts)) if raw else self._encode(list(prompts))
        self.check_lengths(features, max_new_tokens)
        out: list[str] = []
        with without_receiver_lora(self.bare_model):
            for start in range(0, len(features), batch_size):
                chunk = features[start:start + batch_size]
                out.extend(self._generate(chunk, max_new_tokens, min_new_tokens))
                if on_batch:
                    on_batch(len(chunk))
        return out

    def _decode(self, new_ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _generate_kwargs(min_new_tokens: int) -> dict[str, Any]:
    return {"min_new_tokens": min_new_tokens} if min_new_tokens > 0 else {}


# -- plain causal LMs ------------------------------------------------------------------------------
class PlainModel(System):
    """A causal LM on its own: the prompt in its template is prefilled once per item, the option tokens
    continue from its cache."""

    def __init__(self, lm: LoadedModel, *, template: TemplateName = "auto", name: str | None = None,
                 kind: str = "plain"):
        self.lm, self.template = lm, template
        self.tokenizer = lm.tokenizer
        self.name, self.kind = name or lm.name, kind
        self.bare_model = lm.model  # a model on its own, never with a composed adapter's receiver LoRA

    @property
    def device(self) -> torch.device:
        return next(self.lm.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"model": self.lm.name, "template": self.template}

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's token ids: template applied, BOS added unless the template wrote it."""
        text = format_messages(self.tokenizer, [{"role": "user", "content": prompt}], self.template).text
        return list(self.tokenizer(text, add_special_tokens=auto_special_tokens(self.tokenizer, text))["input_ids"])

    def length_limits(self) -> dict[str, Any]:
        return {"prompt_ids": self.lm.model}

    def _encode(self, prompts: Sequence[str]) -> list[Feature]:
        return [{"prompt_ids": self.prompt_ids(p)} for p in prompts]

    def _encode_raw(self, contexts: Sequence[str]) -> list[Feature]:
        return [{"prompt_ids": context_ids(self.tokenizer, c)} for c in contexts]

    def _left_pad(self, features: list[Feature]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = pad_token_id(self.tokenizer)
        width = max(len(f["prompt_ids"]) for f in features)
        ids = torch.full((len(features), width), pad, dtype=torch.long)
        mask = torch.zeros(len(features), width, dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["prompt_ids"])
            ids[i, width - n:] = torch.tensor(f["prompt_ids"], dtype=torch.long)
            mask[i, width - n:] = 1
        return ids.to(self.device), mask.to(self.device)

    def _score_items(self, features: list[Feature], options: list[list[list[int]]]) -> list[list[float]]:
        p_ids, p_mask = self._left_pad(features)
        if p_ids.shape[1] < 2:
            raise LCFError(f"{self.name}: prompts need at least 2 tokens to be scored")
        # prefill all prompt tokens but the last once per item (no LM-head logits), like the communicator
        view = prefill(self.lm.model, p_ids[:, :-1], attention_mask=p_mask[:, :-1],
                       position_ids=positions_from_mask(p_mask[:, :-1]))
        item, r_ids, r_mask = option_rows(options, pad_token_id(self.tokenizer), self.device)
        p_ids, p_mask = p_ids.index_select(0, item), p_mask.index_select(0, item)
        inp, attn = torch.cat([p_ids[:, -1:], r_ids], 1), torch.cat([p_mask, r_mask], 1)
        pos = p_mask.sum(-1, keepdim=True) - 1 + torch.arange(inp.shape[1], device=inp.device)
        logits = self.lm.model(input_ids=inp, attention_mask=attn, position_ids=pos, use_cache=True,
                               **cache_kwargs(self.lm.model, expand_view(view, item).to_cache(self.lm.model))).logits
        return row_log_likelihood(logits, r_ids, r_mask, options)

    def _generate(self, features: list[Feature], max_new_tokens: int, min_new_tokens: int) -> list[str]:
        ids, mask = self._left_pad(features)
        out = self.lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=pad_token_id(self.tokenizer),
                                     **_generate_kwargs(min_new_tokens))
        return self._decode(out[:, ids.shape[1]:])


class SharerAlone(PlainModel):
    """The sharer answers on its own, in its own template (the adapter's sharer template: plain for
    Gemma-3 base models, which have no chat template)."""

    def __init__(self, source: Any, *, name: str = "sharer", template: TemplateName | None = None):
        lm = source.sharer if hasattr(source, "communicator") else source
        if template is None:
            template = source.config.get("templates", {}).get("sharer", "auto") if hasattr(source, "config") else "auto"
        super().__init__(lm, template=template, name=name, kind="sharer")


# -- systems running an adapter's communicator -----------------------------------------------------
class CommunicatorSystem(System):
    """Runs ``adapter.communicator``: receiver prompt (receiver template), sharer prompt (sharer
    template) and token alignment built exactly like :meth:`lcf.runtime.Adapter.encode`."""

    sharer_transform: SharerTransform | None = None

    def __init__(self, adapter: Any, *, fuse: bool, name: str, kind: str, label: str | None = None):
        self.adapter, self.fuse, self.name, self.kind = adapter, fuse, name, kind
        self.label = label
        self.tokenizer = adapter.receiver.tokenizer
        self.r_pad, self.s_pad = pad_token_id(adapter.receiver.tokenizer), pad_token_id(adapter.sharer.tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.adapter.receiver.model.parameters()).device

    def length_limits(self) -> dict[str, Any]:
        limits = {"receiver_prompt_ids": self.adapter.receiver.model}
        return limits | ({"sharer_prompt_ids": self.adapter.sharer.model} if self.fuse else {})

    def _encode(self, prompts: Sequence[str]) -> list[Feature]:
        templates = self.adapter.config.get("templates", {})
        return [prompt_features(self.adapter.aligner.align_messages(
            self.adapter.receiver.tokenizer, self.adapter.sharer.tokenizer, [{"role": "user", "content": p}],
            receiver_template=templates.get("receiver", "auto"), sharer_template=templates.get("sharer", "auto"),
        )) for p in prompts]

    def _encode_raw(self, contexts: Sequence[str]) -> list[Feature]:
        """Both models read the same raw text (tokenized as :func:`lcf.eval.scoring.context_ids` does),
        aligned over all of it."""
        r_tok, s_tok = self.adapter.receiver.tokenizer, self.adapter.sharer.tokenizer
        return [prompt_features(self.adapter.aligner.align_texts(
            r_tok, s_tok, c, c, [(0, 0, len(c))],
            add_special_tokens=(auto_special_tokens(r_tok, c), auto_special_tokens(s_tok, c)),
        )) for c in contexts]

    def _batch(self, features: list[Feature]) -> dict[str, torch.Tensor]:
        """Left-padded prompt batch (receiver + sharer prompts, alignment) on the model's device."""
        batch = collate_prompts(features, self.r_pad, self.s_pad)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _score_items(self, features: list[Feature], options: list[list[list[int]]]) -> list[list[float]]:
        comm = self.adapter.communicator
        prompts = self._batch(features)
        view = comm.fused_prompt_cache(prompts, fuse=self.fuse, sharer_transform=self.sharer_transform)
        item, r_ids, r_mask = option_rows(options, self.r_pad, self.device)
        rows = {"receiver_prompt_ids": prompts["receiver_prompt_ids"].index_select(0, item),
                "receiver_prompt_mask": prompts["receiver_prompt_mask"].index_select(0, item),
                "response_ids": r_ids, "response_mask": r_mask}
        return row_log_likelihood(comm.continue_logits(rows, expand_view(view, item)), r_ids, r_mask, options)

    def _generate(self, features: list[Feature], max_new_tokens: int, min_new_tokens: int) -> list[str]:
        new = self.adapter.communicator.generate(
            self._batch(features), fuse=self.fuse, max_new_tokens=max_new_tokens,
            sharer_transform=self.sharer_transform, pad_token_id=self.r_pad, **_generate_kwargs(min_new_tokens))
        return self._decode(new)


class ReceiverAlone(System):
    """The receiver on its own: an adapter's communicator with ``fuse=False`` (the sharer is never
    run; a composed adapter's receiver LoRA is switched off), or a plain :class:`LoadedModel` in its
    template (default ``"auto"``)."""

    def __init__(self, source: Any, *, name: str = "receiver", template: TemplateName | None = None):
        self.name, self.kind = name, "receiver"
        if isinstance(source, LoadedModel):
            self.impl: System = PlainModel(source, template=template or "auto", name=name, kind="receiver")
        else:
            self.impl = CommunicatorSystem(source, fuse=False, name=name, kind="receiver")
        self.tokenizer = self.impl.tokenizer
        self.bare_model = source.model if isinstance(source, LoadedModel) else source.receiver.model

    @property
    def device(self) -> torch.device:
        return self.impl.device

    def length_limits(self) -> dict[str, Any]:
        return self.impl.length_limits()

    def _encode(self, prompts: Sequence[str]) -> list[Feature]:
        return self.impl._encode(prompts)

    def _encode_raw(self, contexts: Sequence[str]) -> list[Feature]:
        return self.impl._encode_raw(contexts)

    def _score_items(self, features: list[Feature], options: list[list[list[int]]]) -> list[list[float]]:
        return self.impl._score_items(features, options)

    def _generate(self, features: list[Feature], max_new_tokens: int, min_new_tokens: int) -> list[str]:
        return self.impl._generate(features, max_new_tokens, min_new_tokens)


class AdapterSystem(CommunicatorSystem):
    """Receiver + the sharer's cache fused through ``adapter``, or a control through the same adapter.

    control:
        ``"none"`` — the item's own sharer cache (the real system).
        ``"zero"`` — an all-zero sharer cache (:func:`zero_sharer_cache`): what the translator adds
        without any sharer information.
        ``"mismatched"`` — the sharer prompt of another item (:func:`mismatch_partner`) while the
        receiver prompt is the item's own. The fused receiver positions (``align_mask``) stay the
        item's own; each position reads ``min(aligned sharer position, len(other sharer prompt) - 1)``
        of the other prompt, i.e. the alignment is clipped to the other prompt's length. The
        item's own sharer prompt never enters the batch (each feature records ``sharer_source``).
    label: the adapter's name in reports (default: the system name).
    """

    def __init__(self, adapter: Any, control: Control = "none", *, name: str | None = None,
                 label: str | None = None):
        if control not in CONTROLS:
            raise LCFError(f"unknown adapter control {control!r}; expected one of {', '.join(CONTROLS)}")
        base = label or "adapter"
        default = base if control == "none" else f"{base} ({control})"
        super().__init__(adapter, fuse=True, name=name or default, kind="adapter" if control == "none" else control,
                         label=base)
        self.control = control
        self.sharer_transform = zero_sharer_cache if control == "zero" else None
        # a single prompt has no other item to take a cache from; the cost is the adapter's anyway
        self.timed = control != "mismatched"

    @property
    def num_parameters(self) -> int:
        return int(self.adapter.config.get("num_parameters") or self.adapter.translator.num_parameters())

    @property
    def size_bytes(self) -> int:
        return int(self.adapter.config.get("size_bytes") or self.adapter.translator.size_bytes())

    def gate_values(self) -> dict[int, tuple[float, float]]:
        """Receiver layer -> (K gate, V gate) of the adapter's translator ({} without gates)."""
        fn = getattr(self.adapter.translator, "gate_values", None)
        return {int(k): (float(v[0]), float(v[1])) for k, v in fn().items()} if fn else {}

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"adapter": self.label, "control": self.control}

    def _encode(self, prompts: Sequence[str]) -> list[Feature]:
        return control_features(self.control, super()._encode(prompts), prompts)

    def _encode_raw(self, contexts: Sequence[str]) -> list[Feature]:
        return control_features(self.control, super()._encode_raw(contexts), contexts)
