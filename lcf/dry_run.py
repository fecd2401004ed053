"""`lcf params RECIPE...`: build a recipe's translator (and compressor) from the models' shapes alone and
count its parameters, next to the figures the papers publish for it. No weights are loaded.

Shapes come from the model cards (``num_layers``, ``num_kv_heads``, ``head_dim``) or, for a local model
directory or hub id, from its ``config.json`` (transformers' ``AutoConfig``; a hub id needs the hub or its
cache). Modules are built on torch's ``meta`` device: C2C's 478M parameters cost no memory and no init time.
A recipe's ``receiver_adapter`` (a LoRA on the receiver) is counted apart, on the receiver built on the meta device
from its card's widths (``hidden_size``, ``intermediate_size``, ``num_heads``) or its ``config.json``.

Published figures live in ``registry/papers/*.yaml`` (next to the model and pair cards; folders on
``LCF_REGISTRY_PATH`` are searched too). An entry applies to the recipes it names whose translator
arguments include the entry's ``translator`` mapping; ``keep_layers: N`` counts the adapter pruned to N
layers (``lcf prune --keep N``), as the LCF paper reports its pruned translator.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from lcf import cards
from lcf.errors import RecipeError
from lcf.models.kv import LayerSpec, layer_specs
from lcf.registry import compressors, layer_maps, translators
from lcf.translators.base import PairShapes

__all__ = ["Count", "Figure", "count_receiver_lora", "count_recipe", "load_figures", "model_config", "model_specs"]

#: card field -> transformers config field, for building a card's model on the meta device
CARD_CONFIG = {"num_layers": "num_hidden_layers", "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
               "hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
               "num_heads": "num_attention_heads", "vocab_size": "vocab_size"}


@dataclass(frozen=True)
class Figure:
    """A parameter count a paper publishes for a recipe's translator."""

    recipes: tuple[str, ...]
    params: float | None
    source: str
    translator: dict[str, Any]
    per_layer: float | None = None
    bf16_mb: float | None = None
    keep_layers: int | None = None

    def applies_to(self, name: str, translator: dict[str, Any]) -> bool:
        return name in self.recipes and all(translator.get(k) == v for k, v in self.translator.items())


@dataclass(frozen=True)
class Count:
    """What the dry run built for one recipe."""

    recipe: str
    name: str
    translator: str
    fused_layers: int
    params: int
    compressor_params: int
    figure: Figure | None
    receiver_lora_params: int = 0

    @property
    def total(self) -> int:
        """Everything the adapter trains and ships: translator, compressor and receiver LoRA."""
        return self.params + self.compressor_params + self.receiver_lora_params

    @property
    def per_layer(self) -> float:
        return self.params / max(self.fused_layers, 1)

    @property
    def bf16_mb(self) -> float:
        return self.total * 2 / 1e6

    def difference(self) -> float | None:
        """Relative difference to the published count (None without one)."""
        if self.figure is None or not self.figure.params:
            return None
        return self.params / self.figure.params - 1.0


def load_figures(roots: list[Path] | None = None) -> list[Figure]:
    """Every entry of ``<root>/papers/*.yaml`` over the registry roots."""
    out: list[Figure] = []
    for root in roots if roots is not None else cards.registry_roots():
        for path in sorted((root / "papers").glob("*.yaml")):
            data = yaml.safe_load(path.read_text()) or {}
            entries = data.get("figures") if isinstance(data, dict) else None
            if not isinstance(entries, list):
                raise RecipeError(f"{path}: expected a mapping with a `figures:` list of {{recipes, params, source}}")
            for k, entry in enumerate(entries):
                try:
                    entry = dict(entry)
                    for key in ("params", "per_layer", "bf16_mb"):  # YAML 1.1 reads 478.0e6 as a string
                        if entry.get(key) is not None:
                            entry[key] = float(entry[key])
                    out.append(Figure(recipes=tuple(entry.pop("recipes")), translator=dict(entry.pop("translator", {})),
                                      **entry))
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise RecipeError(
                        f"{path}: figures[{k}] is malformed ({type(exc).__name__}: {exc}); expected keys recipes "
                        f"(list of recipe names), params, source and optionally translator, per_layer, bf16_mb, "
                        f"keep_layers") from exc
    return out


def model_specs(spec: Any, role: str) -> list[LayerSpec]:
    """Per-layer cache layout of a recipe's model from its card, or from a directory's / hub id's config."""
    name = spec.get("card") or spec.get("path") if isinstance(spec, dict) else spec
    if isinstance(name, str) and name in cards.model_card_names():
        card = cards.model_card(name)
        missing = [k for k in ("num_layers", "num_kv_heads", "head_dim") if getattr(card, k) is None]
        if missing:
            raise RecipeError(f"{role}: model card {name!r} ({card.card_path}) lacks {', '.join(missing)}, which the "
                              f"dry run needs; add them to the card (they are in the model's config.json)")
        # the cards do not say which layers slide; no translator's size depends on it
        return [LayerSpec(card.num_kv_heads, card.head_dim, None)] * card.num_layers
    return layer_specs(model_config(spec, role))


def model_config(spec: Any, role: str):
    """A transformers config of a recipe's model: from its card's facts, or a directory's / hub id's config.json."""
    from transformers import AutoConfig

    name = spec.get("card") or spec.get("path") if isinstance(spec, dict) else spec
    if isinstance(name, str) and name in cards.model_card_names():
        card = cards.model_card(name)
        missing = [k for k in ("model_type", *CARD_CONFIG) if getattr(card, k) is None]
        if missing:
            raise RecipeError(f"{role}: model card {name!r} ({card.card_path}) lacks {', '.join(missing)}, which the "
                              f"dry run needs to build the model's layers; add them to the card (config.json has "
                              f"them: {', '.join(CARD_CONFIG.get(k, k) for k in missing)})")
        try:
            return AutoConfig.for_model(card.model_type, **{v: getattr(card, k) for k, v in CARD_CONFIG.items()})
        except ValueError as exc:  # a model_type this transformers does not know
            raise RecipeError(f"{role}: model card {name!r} has model_type {card.model_type!r}, which this "
                              f"transformers version cannot build ({exc}); upgrade transformers") from exc
    try:
        return AutoConfig.from_pretrained(str(name))
    except Exception as exc:  # no such directory, offline hub id, ...
        raise RecipeError(f"{role}: {name!r} is not a model card and its config could not be read "
                          f"({type(exc).__name__}: {exc}); name a card from registry/models/ or a directory holding "
                          f"config.json") from exc


def count_receiver_lora(recipe: dict[str, Any]) -> int:
    """Parameters of the recipe's receiver LoRA (0 without ``receiver_adapter``): the receiver is built on the meta
    device and every targeted Linear layer counted as ``rank * (in + out)``."""
    spec = recipe.get("receiver_adapter")
    if not spec:
        return 0
    from transformers import AutoModelForCausalLM

    from lcf.runtime.receiver_lora import lora_settings, target_linears

    rank, _, targets = lora_settings(dict(spec))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(recipe["receiver"], "receiver"))
    return sum(rank * (m.in_features + m.out_features) for m in target_linears(model, targets).values())


def count_recipe(recipe: dict[str, Any], origin: str, figures: list[Figure] | None = None) -> Count:
    """Build ``recipe``'s translator and compressor on the meta device and count their parameters."""
    if recipe.get("sharers"):
        raise RecipeError(f"{origin}: the dry run takes one-sharer recipes; this one lists `sharers:`")
    if not recipe.get("translator"):
        raise RecipeError(f"{origin}: no `translator:` section to count")
    sharer, receiver = model_specs(recipe["sharer"], "sharer"), model_specs(recipe["receiver"], "receiver")
    build_map = layer_maps.build(recipe.get("layer_map") or {"type": "terminal"}, "layer_map")
    layer_map = build_map(len(sharer), len(receiver))
    shapes = PairShapes(tuple(sharer), tuple(receiver), layer_map)
    name = str(recipe.get("name") or Path(origin).stem)
    spec = dict(recipe["translator"])
    figure = next((f for f in (load_figures() if figures is None else figures) if f.applies_to(name, spec)), None)
    with torch.device("meta"):
        translator = translators.build(spec, "translator", shapes=shapes)
        compressor = (compressors.build(recipe["compressor"], "compressor", shapes=shapes)
                      if recipe.get("compressor") else None)
    if figure is not None and figure.keep_layers:
        active = sorted(translator.active_layers)
        if figure.keep_layers > len(active):
            raise RecipeError(f"{origin}: the published figure keeps {figure.keep_layers} layers but the translator "
                              f"has {len(active)}")
        # all layers of a pair with one layout per side have the same size: which ones stay does not matter here
        translator.prune(keep=active[-figure.keep_layers:])
    return Count(recipe=origin, name=name, translator=str(spec["type"]), fused_layers=len(translator.active_layers),
                 params=translator.num_parameters(), compressor_params=compressor.num_parameters() if compressor else 0,
                 figure=figure, receiver_lora_params=count_receiver_lora(recipe))
