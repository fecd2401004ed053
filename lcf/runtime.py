"""Minimal inference runtime: load an exported adapter and answer with the sharer's cache fused in.

Needs only torch, transformers and safetensors (no Lightning, DeepSpeed or OmegaConf):

    from lcf.runtime import load_adapter
    adapter = load_adapter("adapters/quickstart")          # loads the models named in the adapter
    print(adapter.generate("Name three primary colours."))
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lcf.communicator import Communicator
from lcf.data.features import collate_prompts, pad_token_id, prompt_features
from lcf.errors import LCFError
from lcf.models.fingerprint import fingerprint
from lcf.models.loading import LoadedModel, load_model
from lcf.registry import token_aligners, translators

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
KNOWN_KEYS = {
    "format_version", "lcf_version", "translator", "compressor", "shapes", "layer_map", "token_alignment",
    "templates", "sharer", "receiver", "dtype", "num_parameters", "size_bytes", "training",
}


class AdapterError(LCFError, ValueError):
    """An adapter folder that cannot be loaded (missing, corrupted, or for other models)."""


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise AdapterError(f"{folder} is not an lcf adapter: {CONFIG_NAME} is missing (export one with `lcf export`)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path} is not valid JSON ({exc}); re-export the adapter") from exc
    if cfg.get("format_version") != FORMAT_VERSION:
        raise AdapterError(f"{path}: format_version {cfg.get('format_version')!r} is not supported (expected {FORMAT_VERSION}); upgrade lcf")
    unknown = sorted(set(cfg) - KNOWN_KEYS)
    if unknown:
        log.warning("%s: ignoring unknown keys %s (written by a newer lcf?)", path, unknown)
    return cfg


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterError(f"{path} is missing: the adapter folder is incomplete; re-export it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(
            f"{path} is truncated or corrupted ({type(exc).__name__}: {exc}); re-export or re-download the adapter"
        ) from exc


def build_translator(cfg: dict[str, Any], state: dict[str, torch.Tensor]):
    from lcf.translators.base import PairShapes

    spec = cfg["translator"]
    cls = translators.get(spec["type"])
    translator = cls(shapes=PairShapes.from_dict(cfg["shapes"]), **spec.get("args", {}))
    expected = translator.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise AdapterError(
            f"adapter tensors do not match a {spec['type']} built from its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
    translator.load_state_dict(state, strict=True)
    return translator.eval()


def _as_loaded(model: Any, default: str, dtype) -> LoadedModel:
    if model is None:
        model = default
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, tuple) and len(model) == 2:
        return LoadedModel(name=getattr(model[0], "name_or_path", "model"), model=model[0], tokenizer=model[1],
                           card=None, path="")
    return load_model(model, dtype=dtype)


def check_fingerprint(role: str, expected: dict, lm: LoadedModel) -> None:
    got = fingerprint(lm.model, lm.tokenizer)
    want = expected.get("fingerprint", {})
    if got != want:
        raise AdapterError(
            f"this adapter was trained for {role} {expected.get('name')!r} with fingerprint {want}, but the "
            f"{role} given ({lm.name!r}) has fingerprint {got}. Load the adapter with the models it was "
            f"trained for (or pass check_fingerprints=False if you know the models are equivalent)."
        )


@dataclass
class Adapter:
    config: dict[str, Any]
    communicator: Communicator
    sharer: LoadedModel
    receiver: LoadedModel
    aligner: Any

    @property
    def translator(self):
        return self.communicator.translator

    def encode(self, prompts: Sequence[str | Sequence[dict]]) -> dict[str, torch.Tensor]:
        """Left-padded prompt batch (receiver and sharer templates, token alignment)."""
        items = []
        templates = self.config.get("templates", {})
        for p in prompts:
            messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            items.append(prompt_features(self.aligner.align_messages(
                self.receiver.tokenizer, self.sharer.tokenizer, messages,
                receiver_template=templates.get("receiver", "auto"), sharer_template=templates.get("sharer", "auto"),
            )))
        return collate_prompts(items, pad_token_id(self.receiver.tokenizer), pad_token_id(self.sharer.tokenizer))

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[dict] | list, *, max_new_tokens: int = 64, fuse: bool = True,
                 **generate_kwargs) -> str | list[str]:
        """Answer one prompt (str or chat messages) or a list of them; greedy unless told otherwise."""
        single = isinstance(prompt, str) or (prompt and isinstance(prompt[0], dict))
        prompts = [prompt] if single else list(prompt)
        batch = self.encode(prompts)
        device = next(self.translator.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        new = self.communicator.generate(batch, fuse=fuse, max_new_tokens=max_new_tokens,
                                         pad_token_id=pad_token_id(self.receiver.tokenizer), **generate_kwargs)
        texts = self.receiver.tokenizer.batch_decode(new, skip_special_tokens=True)
        texts = [t.strip() for t in texts]
        return texts[0] if single else texts


def load_adapter(path: str | Path, *, sharer: Any = None, receiver: Any = None, device: str | None = None,
                 dtype: str | None = None, check_fingerprints: bool = True) -> Adapter:
    """Load an exported adapter. ``sharer``/``receiver``: a model spec (card name, local dir, hub id),
    a ``LoadedModel``, a ``(model, tokenizer)`` tuple, or None for the models named in the adapter."""
    folder = Path(path)
    cfg = read_config(folder)
    translator = build_translator(cfg, load_weights(folder))
    s = _as_loaded(sharer, cfg["sharer"]["name"], dtype)
    r = _as_loaded(receiver, cfg["receiver"]["name"], dtype)
    if check_fingerprints:
        check_fingerprint("sharer", cfg["sharer"], s)
        check_fingerprint("receiver", cfg["receiver"], r)
    comm = Communicator(r.model, [s.model], [translator]).eval()
    if device:
        comm.to(device)
    aligner = token_aligners.build(cfg.get("token_alignment") or {"type": "maximal_coverage"}, "token_alignment")
    return Adapter(config=cfg, communicator=comm, sharer=s, receiver=r, aligner=aligner)
