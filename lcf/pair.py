"""A model pair built from a recipe: sharer, receiver, layer map and token aligner."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lcf.align.layers import LayerMap
from lcf.models.kv import LayerSpec, layer_specs
from lcf.models.loading import LoadedModel, load_model
from lcf.registry import layer_maps, token_aligners


@dataclass
class Pair:
    sharer: LoadedModel
    receiver: LoadedModel
    layer_map: LayerMap
    aligner: Any  # a registered token aligner

    @property
    def sharer_specs(self) -> list[LayerSpec]:
        return layer_specs(self.sharer.model.config)

    @property
    def receiver_specs(self) -> list[LayerSpec]:
        return layer_specs(self.receiver.model.config)


def build_pair(recipe: dict, *, dtype: str | None = None) -> Pair:
    """Load both models of a validated recipe dict and build its layer map and aligner."""
    if recipe.get("sharers"):
        from lcf.errors import RecipeError

        raise RecipeError(
            f"this command takes a one-sharer recipe, and this one lists {len(recipe['sharers'])} `sharers:`; "
            f"train and export it with `lcf train` / `lcf export`, or run this command on a recipe with `sharer:` "
            f"(one entry of the list)"
        )
    sharer = load_model(recipe["sharer"], dtype=dtype)
    receiver = load_model(recipe["receiver"], dtype=dtype)
    lm_factory = layer_maps.build(recipe.get("layer_map") or {"type": "terminal"}, "layer_map")
    layer_map = lm_factory(len(layer_specs(sharer.model.config)), len(layer_specs(receiver.model.config)))
    aligner = token_aligners.build(recipe.get("token_alignment") or {"type": "maximal_coverage"}, "token_alignment")
    return Pair(sharer=sharer, receiver=receiver, layer_map=layer_map, aligner=aligner)
