"""Types of an ``adapter_config.json`` checked before anything is built from it, so a hand edit
(``head_dim: "64"``, an unknown translator argument) is one :class:`AdapterError` naming the file and
the key, not a ``TypeError`` from deep inside a constructor."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lcf.errors import RecipeError
from lcf.runtime.format import AdapterError

ACTIVE_LAYERS = "active_layers"  # lcf.translators.base.ACTIVE_LAYERS_ARG, the layers kept by `lcf prune`
FIX = "re-export the adapter with `lcf export` (or undo the hand edit)"


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_shapes(shapes: Any, path: Path, key: str = "shapes") -> None:
    """``shapes``: per-layer ``kv_heads`` / ``head_dim`` integers (``sliding_window`` an integer or null)
    and a layer map of integers."""
    if not isinstance(shapes, dict):
        raise AdapterError(f"{path}: {key} must be a JSON object, got {type(shapes).__name__}; {FIX}")
    for role in ("sharer", "receiver"):
        layers = shapes.get(role)
        if not isinstance(layers, list) or not layers:
            raise AdapterError(f"{path}: {key}.{role} must be a non-empty list of layer shapes, got {layers!r}; {FIX}")
        for i, spec in enumerate(layers):
            if not isinstance(spec, dict):
                raise AdapterError(f"{path}: {key}.{role}[{i}] must be a JSON object, got {spec!r}; {FIX}")
            for name, value in spec.items():
                ok = _int(value) and value > 0 if name in ("kv_heads", "head_dim") else value is None or _int(value)
                if not ok:
                    want = "a positive integer" if name in ("kv_heads", "head_dim") else "an integer or null"
                    raise AdapterError(f"{path}: {key}.{role}[{i}].{name} must be {want}, got "
                                       f"{type(value).__name__} {value!r}; {FIX}")
    lm = shapes.get("layer_map")
    if not isinstance(lm, dict) or not _int(lm.get("sharer_layers")) or not isinstance(lm.get("sharer_of"), list):
        raise AdapterError(f"{path}: {key}.layer_map must be {{sharer_of: [int or null, ...], sharer_layers: int}}, "
                           f"got {lm!r}; {FIX}")
    for i, s in enumerate(lm["sharer_of"]):
        if s is not None and not _int(s):
            raise AdapterError(f"{path}: {key}.layer_map.sharer_of[{i}] must be an integer or null, got "
                               f"{type(s).__name__} {s!r}; {FIX}")


def check_component(registry: Any, spec: Any, path: Path, key: str) -> None:
    """``spec`` = ``{type, args}``: a registered type whose constructor takes exactly these arguments,
    each of its annotated type."""
    if not isinstance(spec, dict):
        raise AdapterError(f"{path}: {key} must be a JSON object {{type, args}}, got {type(spec).__name__}; {FIX}")
    args = spec.get("args", {})
    if not isinstance(args, dict):
        raise AdapterError(f"{path}: {key}.args must be a JSON object, got {type(args).__name__}; {FIX}")
    extra = {"shapes": None}
    if ACTIVE_LAYERS in args:  # every gated translator takes the layers `lcf prune` kept
        kept = args[ACTIVE_LAYERS]
        if not isinstance(kept, list) or not all(_int(t) and t >= 0 for t in kept):
            raise AdapterError(f"{path}: {key}.args.{ACTIVE_LAYERS} must be a list of receiver layer numbers, got "
                               f"{kept!r}; {FIX}")
        args = {k: v for k, v in args.items() if k != ACTIVE_LAYERS}
    try:
        registry.check({"type": spec.get("type"), **args}, f"{key}.args", extra=extra)
    except RecipeError as exc:
        text = str(exc).replace(f"{key}.args.type", f"{key}.type", 1)
        raise AdapterError(f"{path}: {text} {FIX}") from exc


def check_config_types(cfg: dict[str, Any], path: Path) -> None:
    """The translator, compressor and shapes of ``cfg`` and of each ``sharers`` entry."""
    from lcf.registry import compressors, translators

    for i, entry in enumerate(cfg.get("sharers") or []):
        check_sharer_entry(entry, path, i)
    check_shapes(cfg["shapes"], path)
    check_component(translators, cfg["translator"], path, "translator")
    if cfg.get("compressor"):
        check_component(compressors, cfg["compressor"], path, "compressor")
    for i, entry in enumerate(cfg.get("sharers") or []):
        if isinstance(entry, dict) and isinstance(entry.get("shapes"), dict):
            check_shapes(entry["shapes"], path, f"sharers[{i}].shapes")
        if isinstance(entry, dict) and isinstance(entry.get("translator"), dict):
            check_component(translators, entry["translator"], path, f"sharers[{i}].translator")


#: keys every entry of a several-sharer config's ``sharers`` list needs, with their JSON types
ENTRY_KEYS: dict[str, type] = {"translator": dict, "translator.type": str, "shapes": dict, "sharer": dict,
                               "sharer.name": str}


def check_sharer_entry(entry: Any, path: Path, i: int) -> None:
    """Refuse a ``sharers[i]`` entry that is not an object or lacks a key the runtime reads."""
    if not isinstance(entry, dict):
        raise AdapterError(f"{path}: sharers[{i}] must be a JSON object, got {type(entry).__name__}; {FIX}")
    for key, kind in ENTRY_KEYS.items():
        node: Any = entry
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, kind):
            got = "missing" if node is None else f"a {type(node).__name__}"
            raise AdapterError(f"{path}: required key 'sharers[{i}].{key}' is {got} (expected a "
                               f"{kind.__name__}); {FIX}")
