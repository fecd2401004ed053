"""Model and pair cards: YAML files in ``registry/`` that hold every model fact the code needs.

Search path: the built-in ``registry/`` folder of the lcf checkout (or its copy in an installed wheel,
see :mod:`lcf.shipped`), then every folder listed in the
``LCF_REGISTRY_PATH`` environment variable (``os.pathsep``-separated). Later folders win, so a user
can shadow a built-in card. Layout: ``<root>/models/<name>.yaml`` and ``<root>/pairs/<name>.yaml``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lcf.errors import RecipeError, RegistryError, suggest
from lcf.shipped import shipped_dir

BUILTIN_REGISTRY = shipped_dir("registry") or Path(__file__).resolve().parent.parent / "registry"
SOURCE_KINDS = ("hub", "local", "pip_gguf")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # one of SOURCE_KINDS
    repo: str | None = None  # hub id (kind=hub)
    path: str | None = None  # local folder (kind=local)
    package: str | None = None  # pip distribution holding the GGUF (kind=pip_gguf)
    file: str | None = None  # GGUF file name, inside the package or written by `assemble`
    assemble: str | None = None  # "module:function(output_path)" that writes `file` (split packages)
    revision: str | None = None
    install: str | None = None  # the shell command that installs `package` (shown in errors)


@dataclass(frozen=True)
class ModelCard:
    name: str
    source: ModelSource
    description: str = ""
    chat_template: bool = False  # does the tokenizer ship a chat template?
    model_type: str | None = None
    num_layers: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    # the decoder's widths (config.json's hidden_size, intermediate_size, num_attention_heads): `lcf params` builds
    # the receiver on the meta device from them to count a receiver LoRA
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_heads: int | None = None
    vocab_size: int | None = None
    sliding_window: int | None = None  # None when every layer attends globally
    max_positions: int | None = None
    dtype: str = "float32"  # dtype used to load (GGUF models are dequantized to this)
    license: str = ""
    card_path: str | None = None


@dataclass(frozen=True)
class PairCard:
    name: str
    sharer: str
    receiver: str
    description: str = ""
    layer_map: dict[str, Any] = field(default_factory=lambda: {"type": "terminal"})
    token_alignment: dict[str, Any] = field(default_factory=lambda: {"type": "maximal_coverage"})
    card_path: str | None = None


def registry_roots() -> list[Path]:
    roots = [BUILTIN_REGISTRY] if BUILTIN_REGISTRY.is_dir() else []
    for part in os.environ.get("LCF_REGISTRY_PATH", "").split(os.pathsep):
        if part.strip():
            roots.append(Path(part).expanduser())
    return roots


def _strict_fields(cls, data: dict, where: str) -> dict:
    names = [f.name for f in dataclasses.fields(cls) if f.name != "card_path"]
    for key in data:
        if key not in names:
            raise RecipeError(f"{where}: unknown key {key!r}.{suggest(key, names)} Allowed keys: {', '.join(names)}.")
    return data


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a card must be a YAML mapping, got {type(data).__name__}")
    return data


def parse_model_card(data: dict, where: str) -> ModelCard:
    data = dict(_strict_fields(ModelCard, data, where))
    src = data.get("source")
    if not isinstance(src, dict) or src.get("kind") not in SOURCE_KINDS:
        raise RecipeError(f"{where}.source: expected a mapping with kind in {SOURCE_KINDS}, got {src!r}")
    _strict_fields(ModelSource, src, f"{where}.source")
    need = {"hub": ("repo",), "local": ("path",), "pip_gguf": ("package", "file")}[src["kind"]]
    for key in need:
        if not src.get(key):
            raise RecipeError(f"{where}.source.{key}: required for kind {src['kind']!r}")
    data["source"] = ModelSource(**src)
    return ModelCard(card_path=where, **data)


def parse_pair_card(data: dict, where: str) -> PairCard:
    return PairCard(card_path=where, **_strict_fields(PairCard, data, where))


@functools.lru_cache(maxsize=None)
def _scan(kind: str, roots: tuple[Path, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in roots:
        folder = root / kind
        if folder.is_dir():
            for f in sorted(folder.glob("*.yaml")):
                found[f.stem] = f
    return found


def _lookup(kind: str, name: str) -> dict:
    files = _scan(kind, tuple(registry_roots()))
    if name not in files:
        raise RegistryError(
            f"unknown {kind[:-1]} card {name!r}.{suggest(name, files)} Known {kind[:-1]} cards: "
            f"{', '.join(sorted(files)) or '(none)'}. Add `{kind}/{name}.yaml` to a folder on "
            f"LCF_REGISTRY_PATH, or give a local model directory instead of a card name."
        )
    data = _read_yaml(files[name])
    if data.get("name", name) != name:
        raise RecipeError(f"{files[name]}: card name {data['name']!r} differs from its file name {name!r}")
    data["name"] = name
    return data | {"__path__": str(files[name])}


def model_card(name: str) -> ModelCard:
    data = _lookup("models", name)
    return parse_model_card({k: v for k, v in data.items() if k != "__path__"}, data["__path__"])


def pair_card(name: str) -> PairCard:
    data = _lookup("pairs", name)
    return parse_pair_card({k: v for k, v in data.items() if k != "__path__"}, data["__path__"])


def model_card_names() -> list[str]:
    return sorted(_scan("models", tuple(registry_roots())))


def pair_card_names() -> list[str]:
    return sorted(_scan("pairs", tuple(registry_roots())))


def find_pair(sharer: str, receiver: str) -> PairCard | None:
    """The pair card for (sharer, receiver), if one is shipped."""
    for name in pair_card_names():
        card = pair_card(name)
        if card.sharer == sharer and card.receiver == receiver:
            return card
    return None
