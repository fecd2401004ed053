"""Minimal inference runtime: load an exported adapter and answer with the sharer's cache fused in.

Needs only torch, transformers and safetensors (no Lightning, DeepSpeed or OmegaConf):

    from lcf.runtime import load_adapter
    adapter = load_adapter("adapters/quickstart")          # loads the models named in the adapter
    print(adapter.generate("Name three primary colours."))

Cross-context adapters (with a compressor) read a context on the sharer's side and a question on
the receiver's; the summary can travel between processes as a latent message (:mod:`lcf.runtime.messages`):

    msg = sender.send(context)                           # sender: load_adapter(path)
    answer = receiver.receive(msg, question)             # receiver: load_adapter(path, with_sharer=False)
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lcf.communicator import Communicator
from lcf.data.features import collate_prompts, pad_token_id, prompt_features
from lcf.errors import LCFError
from lcf.models.loading import LoadedModel
from lcf.registry import compressors, token_aligners, translators
from lcf.runtime.format import AdapterError, load_weights, split_state
from lcf.runtime.kinds import FUSED
from lcf.runtime.models import as_loaded, check_finite_cache, check_fingerprint
from lcf.several.runtime import (SharerSide, batch_to, more_sharer_features, sharer_configs, sharer_states,
                                 translator_config)
from lcf.runtime.xc import XCMixin

log = logging.getLogger(__name__)


def _strict_load(module, state: dict[str, torch.Tensor], what: str):
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise AdapterError(
            f"adapter tensors do not match a {what} built from its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
    module.load_state_dict(state, strict=True)
    return module.eval()


def build_translator(cfg: dict[str, Any], state: dict[str, torch.Tensor]):
    from lcf.translators.base import PairShapes

    spec = cfg["translator"]
    cls = translators.get(spec["type"])
    translator = cls(shapes=PairShapes.from_dict(cfg["shapes"]), **spec.get("args", {}))
    return _strict_load(translator, state, spec["type"])


def build_compressor(cfg: dict[str, Any], state: dict[str, torch.Tensor]):
    """The adapter's compressor (cross-context adapters), or None; strict like the translator."""
    from lcf.translators.base import PairShapes

    spec = cfg.get("compressor")
    if not spec:
        if state:
            raise AdapterError(f"adapter file holds compressor tensors {sorted(state)[:3]} but its config names no "
                               f"compressor; re-export the adapter")
        return None
    cls = compressors.get(spec["type"])
    compressor = cls(shapes=PairShapes.from_dict(cfg["shapes"]), **spec.get("args", {}))
    return _strict_load(compressor, state, spec["type"])


@dataclass
class Adapter(XCMixin):
    """An exported adapter with its models. ``sharer`` is None when loaded with ``with_sharer=False``
    (a receiving process of cross-context messages). Cross-context methods: :mod:`lcf.runtime.xc`."""

    config: dict[str, Any]
    communicator: Communicator
    sharer: LoadedModel | None
    receiver: LoadedModel
    aligner: Any
    folder: Path | None = None
    more_sharers: list[SharerSide] = field(default_factory=list)  # sharers 1.. of a several-sharer adapter

    kind = FUSED  # lcf.runtime.kinds

    @property
    def translator(self):
        return self.communicator.translator

    def encode(self, prompts: Sequence[str | Sequence[dict]]) -> dict[str, torch.Tensor]:
        """Left-padded prompt batch (receiver and sharer templates, token alignment)."""
        if self.is_xc:
            raise LCFError("this is a cross-context adapter: the sharer reads a context of its own. Use "
                           "adapter.send(context) and adapter.receive(message, question)")
        if self.sharer is None:
            raise LCFError("this adapter was loaded without its sharer (with_sharer=False); load it with the sharer")
        items = []
        templates = self.config.get("templates", {})
        for p in prompts:
            messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            items.append(prompt_features(self.aligner.align_messages(
                self.receiver.tokenizer, self.sharer.tokenizer, messages,
                receiver_template=templates.get("receiver", "auto"), sharer_template=templates.get("sharer", "auto"),
            )))
            if self.more_sharers:
                items[-1]["more_sharers"] = more_sharer_features(messages, self.receiver, self.more_sharers,
                                                                 templates.get("receiver", "auto"),
                                                                 items[-1]["receiver_prompt_ids"])
        if self.more_sharers:
            from lcf.several.data import collate_several

            pads = [pad_token_id(self.sharer.tokenizer)] + [pad_token_id(s.model.tokenizer) for s in self.more_sharers]
            return collate_several(items, pad_token_id(self.receiver.tokenizer), pads, with_response=False)
        return collate_prompts(items, pad_token_id(self.receiver.tokenizer), pad_token_id(self.sharer.tokenizer))

    @torch.no_grad()
    def generation_inputs(self, prompt: str | Sequence[dict] | list, *, fuse: bool = True) -> dict[str, Any]:
        """What ``adapter.receiver.model.generate`` takes for ``prompt`` (one, or a list): ``input_ids``,
        ``attention_mask`` and a standard transformers cache holding the prompt with the sharer's cache
        fused in. Sampling, streamers, stopping criteria and batching then work as usual::

            inputs = adapter.generation_inputs("Name three primary colours.")
            adapter.receiver.model.generate(**inputs, max_new_tokens=48, streamer=TextStreamer(tok))

        The cache is consumed by one ``generate`` call: build new inputs for the next one."""
        single = isinstance(prompt, str) or (prompt and isinstance(prompt[0], dict))
        batch = self.encode([prompt] if single else list(prompt))
        self.check_lengths(batch)
        device = next(self.translator.parameters()).device
        return self.communicator.generation_inputs(batch_to(batch, device), fuse=fuse,
                                                   sharer_transform=check_finite_cache if fuse else None)

    def check_lengths(self, batch: dict[str, Any], new_tokens: int = 0) -> None:
        """Refuse prompts longer than the receiver (with ``new_tokens`` to come) or a sharer attends to."""
        from lcf.runtime.limits import check_batch_lengths

        sharers = [self.sharer.model if self.sharer is not None else None] + [s.model.model for s in self.more_sharers]
        check_batch_lengths(batch, self.receiver.model, sharers, new_tokens=new_tokens)

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[dict] | list, *, max_new_tokens: int = 64, fuse: bool = True,
                 **generate_kwargs) -> str | list[str]:
        """Answer one prompt (str or chat messages) or a list of them; greedy unless told otherwise."""
        single = isinstance(prompt, str) or (prompt and isinstance(prompt[0], dict))
        prompts = [prompt] if single else list(prompt)
        batch = self.encode(prompts)
        self.check_lengths(batch, max_new_tokens)
        device = next(self.translator.parameters()).device
        batch = batch_to(batch, device)
        generate_kwargs.setdefault("sharer_transform", check_finite_cache)
        new = self.communicator.generate(batch, fuse=fuse, max_new_tokens=max_new_tokens,
                                         pad_token_id=pad_token_id(self.receiver.tokenizer), **generate_kwargs)
        texts = self.receiver.tokenizer.batch_decode(new, skip_special_tokens=True)
        texts = [t.strip() for t in texts]
        return texts[0] if single else texts


def load_fused_adapter(folder: Path, cfg: dict[str, Any], *, sharer: Any, receiver: Any, device: str | None,
                       dtype: str | None, check_fingerprints: bool, with_sharer: bool, with_receiver: bool) -> Adapter:
    """:func:`lcf.runtime.load_adapter` for adapters that fuse the sharer's cache into the receiver's (the default kind)."""
    if not with_receiver:
        raise AdapterError(f"{folder}: with_receiver=False is only for per-token adapters; this one fuses into the "
                           f"receiver's cache, so it needs the receiver")
    from lcf.runtime.config_types import check_config_types

    check_config_types(cfg, folder / "adapter_config.json")  # types and arguments, before anything is built
    t_state, c_state = split_state(load_weights(folder))
    states = sharer_states(cfg, t_state)  # one per sharer (several-sharer adapters: "sharers.<i>." prefixes)
    entries = sharer_configs(cfg)
    translator = build_translator(translator_config(cfg, entries[0]) if entries else cfg, states[0])
    compressor = build_compressor(cfg, c_state)
    if not with_sharer and compressor is None:
        raise AdapterError(f"{folder}: with_sharer=False only makes sense for cross-context adapters (with a "
                           f"compressor); this adapter needs the sharer's cache of every prompt")
    given = list(sharer) if isinstance(sharer, list) else [sharer]  # several sharers: a list, one spec each
    s = as_loaded(given[0], cfg["sharer"]["name"], dtype) if with_sharer else None
    r = as_loaded(receiver, cfg["receiver"]["name"], dtype)
    if check_fingerprints:
        if s is not None:
            check_fingerprint("sharer", cfg["sharer"], s)
        check_fingerprint("receiver", cfg["receiver"], r)
    more = _more_sharers(entries, states, given, dtype, check_fingerprints)
    from lcf.runtime.receiver_lora import load_receiver_lora

    lora = load_receiver_lora(folder, cfg, r.model)  # a composed adapter's receiver LoRA, hooked on; else None
    comm = Communicator(r.model, [s.model if s is not None else None] + [m.model.model for m, _ in more],
                        [translator] + [t for _, t in more], compressors=[compressor] + [None] * len(more),
                        combine=cfg.get("combine", "sequential"), receiver_adapter=lora).eval()
    if device:
        comm.to(device)
    aligner = token_aligners.build(cfg.get("token_alignment") or {"type": "maximal_coverage"}, "token_alignment")
    return Adapter(config=cfg, communicator=comm, sharer=s, receiver=r, aligner=aligner, folder=folder,
                   more_sharers=[m for m, _ in more])


def _more_sharers(entries: list[dict], states: list[dict], given: list, dtype, check: bool) -> list[tuple]:
    """(SharerSide, translator) for sharers 1.. of a several-sharer adapter (none for one sharer)."""
    if entries and len(given) not in (1, len(entries)):
        raise AdapterError(f"this adapter has {len(entries)} sharers; pass sharer=[...] with one entry each "
                           f"(or None for the models it names), got {len(given)}")
    out = []
    for i, entry in enumerate(entries[1:], start=1):
        lm = as_loaded(given[i] if len(given) > 1 else None, entry["sharer"]["name"], dtype)
        if check:
            check_fingerprint(f"sharer {i}", entry["sharer"], lm)
        aligner = token_aligners.build(entry.get("token_alignment") or {"type": "maximal_coverage"},
                                       f"sharers[{i}].token_alignment")
        side = SharerSide(model=lm, aligner=aligner, template=(entry.get("templates") or {}).get("sharer", "auto"))
        out.append((side, build_translator(translator_config({}, entry), states[i])))
    return out
