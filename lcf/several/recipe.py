"""Several sharers in one recipe: ``sharers:`` is a list, each entry with its own model, translator, layer
map, token alignment and sharer template.

    receiver: smollm2-135m-instruct
    translator: {type: lcf_lowrank, rank: 64}        # default for entries that name none
    sharers:
      - {model: gemma3-270m, layer_map: {type: nearest}}
      - model: smollm2-135m-instruct
        translator: {type: lcf_lowrank, rank: 32}
        layer_map: {type: terminal}
        token_alignment: {type: maximal_coverage}
        templates: {sharer: chat}

Entries inherit the recipe's top-level ``translator``, ``layer_map``, ``token_alignment`` and
``data.sharer_template`` where they leave them out (a section without ``type`` updates the inherited one). The one-sharer form (``sharer:`` + top-level
sections) is the same as a one-entry list. Cross-context compressors take one sharer for now.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lcf.errors import LCFError, RecipeError, suggest

ENTRY_KEYS = ("model", "translator", "layer_map", "token_alignment", "templates")
TEMPLATES = ("auto", "chat", "plain", "raw")


def has_several(recipe: dict[str, Any]) -> bool:
    """Whether the recipe uses the ``sharers:`` list form."""
    return bool(recipe.get("sharers"))


def sharer_entries(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per sharer: ``model``, ``translator``, ``layer_map``, ``token_alignment``, ``sharer_template``
    (defaults filled from the recipe's top level)."""
    data = recipe.get("data") or {}
    base = {"translator": recipe.get("translator"), "layer_map": recipe.get("layer_map") or {"type": "terminal"},
            "token_alignment": recipe.get("token_alignment") or {"type": "maximal_coverage"},
            "sharer_template": data.get("sharer_template", "auto")}
    if not has_several(recipe):
        return [base | {"model": recipe.get("sharer")}]
    out = []
    for entry in recipe["sharers"]:
        e = dict(entry)
        template = (e.get("templates") or {}).get("sharer", base["sharer_template"])
        out.append({"model": e.get("model"), "sharer_template": template,
                    **{k: _inherit(e.get(k), base[k]) for k in ("translator", "layer_map", "token_alignment")}})
    return out


def _inherit(own: Any, default: Any) -> Any:
    """An entry's section: its own when it names a ``type``; the top-level one updated with its keys when it
    names none (``sharers.1.translator.rank=32`` changes the rank of the inherited translator)."""
    if not own:
        return default
    if isinstance(own, dict) and "type" not in own and isinstance(default, dict):
        return default | own
    return own


def entry_recipe(recipe: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The recipe as a one-sharer recipe for ``entry`` (what the one-sharer builders read)."""
    out = {k: v for k, v in recipe.items() if k != "sharers"}
    out |= {"sharer": entry["model"], "translator": entry["translator"], "layer_map": entry["layer_map"],
            "token_alignment": entry["token_alignment"]}
    if recipe.get("data") is not None:
        out["data"] = dict(recipe["data"]) | {"sharer_template": entry["sharer_template"]}
    return out


def check_sharers(data: dict[str, Any], *, check_model: Callable[[Any, str], None],
                  check_component: Callable[[str, dict, str], None],
                  check_depths: Callable[[dict], None]) -> None:
    """Validate the ``sharers:`` list of a recipe dict (no model is loaded). The callbacks are the recipe
    checker's own: a model spec, a component section (kind, spec, path), the layer-map depths."""
    if not has_several(data):
        if "sharers" in data and data["sharers"] is not None:
            raise RecipeError("sharers: an empty list; give at least one {model: ...} entry, or use `sharer:`")
        return
    if data.get("sharer") is not None:
        raise RecipeError("the recipe sets both `sharer:` and `sharers:`; keep one (a one-entry `sharers:` list is "
                          "the same as `sharer:`). With `pair:`, the card's sharer is dropped when `sharers:` is set")
    items = data["sharers"]
    if not isinstance(items, list):
        raise RecipeError(f"sharers: expected a list of {{model: ..., translator: ...}} entries, got {items!r}")
    if data.get("compressor"):
        raise RecipeError("compressor: cross-context recipes take one sharer; use `sharer:` with a compressor, or "
                          "drop the compressor to fuse several sharers into the receiver's own prompt")
    for i, entry in enumerate(items):
        where = f"sharers[{i}]"
        if not isinstance(entry, dict):
            raise RecipeError(f"{where}: expected a mapping such as {{model: gemma3-270m}}, got {entry!r}")
        for key in entry:
            if key not in ENTRY_KEYS:
                raise RecipeError(f"{where}.{key}: unknown key.{suggest(key, ENTRY_KEYS)} Allowed: {', '.join(ENTRY_KEYS)}.")
        check_model(entry.get("model"), f"{where}.model")
        templates = entry.get("templates") or {}
        if not isinstance(templates, dict) or set(templates) - {"sharer"}:
            raise RecipeError(f"{where}.templates: expected {{sharer: auto|chat|plain|raw}}, got {templates!r}")
        if templates.get("sharer", "auto") not in TEMPLATES:
            raise RecipeError(f"{where}.templates.sharer: {templates['sharer']!r} is not one of {', '.join(TEMPLATES)}")
    for i, e in enumerate(sharer_entries(data)):
        where = f"sharers[{i}]"
        if not e["translator"]:
            raise RecipeError(f"{where}.translator: missing, and the recipe has no top-level `translator:` to inherit; "
                              f"e.g. translator: {{type: lcf_lowrank, rank: 64}}")
        check_component("translators", e["translator"], f"{where}.translator")
        check_component("layer_maps", e["layer_map"], f"{where}.layer_map")
        check_component("token_aligners", e["token_alignment"], f"{where}.token_alignment")
        try:
            check_depths({"sharer": e["model"], "receiver": data.get("receiver"), "layer_map": e["layer_map"]})
        except LCFError as exc:
            raise RecipeError(f"{where}: {exc}") from exc


def build_pairs(recipe: dict[str, Any], *, dtype: str | None = None) -> list:
    """One :class:`lcf.pair.Pair` per sharer of a validated recipe, all sharing one loaded receiver."""
    from lcf.models.kv import layer_specs
    from lcf.models.loading import load_model
    from lcf.pair import Pair
    from lcf.registry import layer_maps, token_aligners

    receiver = load_model(recipe["receiver"], dtype=dtype)
    pairs = []
    for i, e in enumerate(sharer_entries(recipe)):
        sharer = load_model(e["model"], dtype=dtype)
        factory = layer_maps.build(e["layer_map"], f"sharers[{i}].layer_map")
        layer_map = factory(len(layer_specs(sharer.model.config)), len(layer_specs(receiver.model.config)))
        aligner = token_aligners.build(e["token_alignment"], f"sharers[{i}].token_alignment")
        pairs.append(Pair(sharer=sharer, receiver=receiver, layer_map=layer_map, aligner=aligner))
    return pairs


def build_translators(recipe: dict[str, Any], pairs: list) -> list:
    """One translator per sharer (its entry's ``translator:``), sized for that sharer and the receiver."""
    from lcf.registry import translators
    from lcf.translators.base import PairShapes

    out = []
    for i, (e, pair) in enumerate(zip(sharer_entries(recipe), pairs)):
        shapes = PairShapes.from_configs(pair.sharer.model.config, pair.receiver.model.config, pair.layer_map)
        out.append(translators.build(e["translator"], f"sharers[{i}].translator", shapes=shapes))
    return out
