"""Recipes: YAML files composed with OmegaConf.

A recipe is a flat mapping. ``defaults:`` lists base files (paths relative to the recipe) merged in
order before the recipe itself; command-line ``key=value`` dotlist overrides come last; ``${...}``
interpolation is resolved at the end (``${oc.env:VAR,default}`` reads the environment).

    defaults: [base/pair.yaml]
    translator: {type: lcf_lowrank, rank: 128}

Component sections hold ``{type: NAME, **arguments}`` and are checked against the registered
component's constructor signature by :func:`validate_recipe` without loading any model.

``imports: [my_pkg.components]`` imports user modules first, so components they register (for
example a subclass of a built-in translator) can be named in the recipe.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lcf import cards
from lcf.shipped import find_recipe
from lcf.errors import LCFError, RecipeError, RegistryError, suggest
from lcf.registry import get_registry
from lcf.several import check_sharers

# section -> (registry kind, constructor arguments supplied by code rather than the recipe)
COMPONENT_SECTIONS: dict[str, tuple[str, frozenset[str]]] = {
    "layer_map": ("layer_maps", frozenset()),
    "token_alignment": ("token_aligners", frozenset()),
    "translator": ("translators", frozenset({"shapes"})),
    "compressor": ("compressors", frozenset({"shapes"})),
    "data": ("datasets", frozenset()),
    "receiver_adapter": ("receiver_adapters", frozenset({"model"})),  # a receiver LoRA (lcf.training.receiver_adapter)
}
# sections whose arguments belong to one component type: a layer that names another `type` replaces the
# section instead of merging into it (`translator.type=gated_fusion` drops LCF's `rank`). `data` merges as
# usual: its loading options (templates, sizes, seed) are shared by every data type.
TYPED_SECTIONS = ("layer_map", "token_alignment", "translator", "compressor", "receiver_adapter")
# sections whose form a layer may switch (init: `type: ridge` or `from: RUN`): then the layer's replaces the base's
WHOLE_SECTIONS = ("init",)
# plain sections validated by a dataclass (registered by the modules that own them)
SETTINGS_SECTIONS: dict[str, str] = {"trainer": "lcf.training.settings:TrainerSettings"}  # section -> "module:Class"
# sections of the per-token map (translator type token_map), each checked by a function "module:function"
METHOD_SECTIONS: dict[str, str] = {"init": "lcf.token_map.init:check_init"}
# `losses:` (a list of loss components, lcf.training.loss) is checked against the recipe's trainer and data
PLAIN_KEYS = {"defaults", "imports", "name", "description", "seed", "data_root", "output_dir", "pair", "sharer", "receiver",
              "sharers", "losses"}  # sharers: a list of sharers, each with its sections (lcf.several.recipe)


def _load_file(path: Path, stack: tuple[Path, ...]) -> DictConfig:
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise RecipeError(f"recipe defaults form a cycle: {chain}")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping")
    merged = OmegaConf.create({})
    defaults = cfg.pop("defaults", None) or []
    if not isinstance(defaults, (ListConfig, list)):
        raise RecipeError(f"{path}: `defaults` must be a list of recipe files, got {defaults!r}")
    for base in defaults:
        base_path = path.parent / str(base)
        if base_path.suffix != ".yaml" and not base_path.exists():
            base_path = base_path.with_suffix(".yaml")
        merged = merge_layers(merged, _load_file(base_path, (*stack, path)))
    return merge_layers(merged, cfg)


def merge_layers(base: DictConfig, top: DictConfig) -> DictConfig:
    """``OmegaConf.merge(base, top)``, except that a section of :data:`TYPED_SECTIONS` whose ``type``
    ``top`` changes is taken from ``top`` alone: the old component's arguments do not carry over."""
    base = base.copy()
    for name in TYPED_SECTIONS:
        old, new = base.get(name), top.get(name)
        if isinstance(old, DictConfig) and isinstance(new, DictConfig) and "type" in new and "type" in old \
                and new.type != old.type:
            del base[name]
    old, new = base.get("losses"), top.get("losses")  # a list of components; an earlier recipe's mapping is refused
    if old is not None and new is not None and isinstance(old, ListConfig) != isinstance(new, ListConfig):
        del base["losses"]  # lists replace each other anyway; a mapping cannot merge into a list
    for name in WHOLE_SECTIONS:  # a layer that switches such a section's form replaces it
        old, new = base.get(name), top.get(name)
        if isinstance(old, DictConfig) and isinstance(new, DictConfig) and \
                any(k in new and k not in old for k in ("type", "from")):
            del base[name]
    return OmegaConf.merge(base, top)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose a recipe file with its defaults and CLI overrides; interpolations resolved."""
    cfg = _load_file(find_recipe(path), ())  # a shipped recipe's name works from any directory
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise RecipeError(f"overrides must look like key=value (e.g. translator.rank=64), got {bad}")
    # keys into lists (`sharers.1.translator.rank=32`, `sharers[1]...`) are set one by one: a dotlist merge
    # would build a mapping {"1": ...} that cannot merge into the list
    into_list = [o for o in overrides if _indexes_a_list(o.partition("=")[0])]
    try:
        cfg = merge_layers(cfg, OmegaConf.from_dotlist([o for o in overrides if o not in into_list]))
        for o in into_list:
            key = o.partition("=")[0]
            OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"value={o.partition('=')[2]}"]).value, merge=True)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise RecipeError(f"{path}: {exc}") from exc
    cfg = apply_pair_card(cfg)
    import_user_modules(cfg.get("imports"))
    return cfg


def _indexes_a_list(key: str) -> bool:
    return "[" in key or any(part.isdigit() for part in key.split("."))


def import_user_modules(modules) -> None:
    """Import the modules a recipe lists under ``imports:`` so their components register."""
    import importlib

    for name in modules or ():
        try:
            importlib.import_module(str(name))
        except ImportError as exc:
            raise RecipeError(
                f"imports: cannot import {name!r} ({exc}). The module must be importable: install it, "
                f"or run from its folder / add that folder to PYTHONPATH."
            ) from exc


def apply_pair_card(cfg: DictConfig) -> DictConfig:
    """Fill sharer/receiver/layer_map/token_alignment from ``pair:`` where the recipe leaves them out."""
    if not cfg.get("pair"):
        return cfg
    try:
        card = cards.pair_card(str(cfg.pair))
    except RegistryError as exc:
        raise RecipeError(f"pair: {exc}") from exc
    base = OmegaConf.create(
        {"sharer": None if cfg.get("sharers") else card.sharer,  # a `sharers:` list replaces the card's sharer
         "receiver": card.receiver, "layer_map": card.layer_map, "token_alignment": card.token_alignment}
    )
    return merge_layers(base, cfg)


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_resolved(cfg: DictConfig | dict, out_dir: str | Path, name: str = "recipe.yaml") -> Path:
    """Write the fully resolved recipe next to a run's outputs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    target.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg), resolve=True))
    return target


def _check_model_spec(value: Any, path: str) -> None:
    if value is None:
        raise RecipeError(f"{path}: missing; give a model card name, a local directory or a hub id")
    if isinstance(value, dict):
        if "card" in value:
            _check_model_spec(value["card"], f"{path}.card")
        unknown = set(value) - {"card", "path"}
        if unknown:
            key = sorted(unknown)[0]
            raise RecipeError(f"{path}.{key}: unknown key.{suggest(key, ['card', 'path'])} Expected `card` and/or `path`.")
        return
    if not isinstance(value, str):
        raise RecipeError(f"{path}: expected a string or {{card, path}}, got {type(value).__name__}")
    names = cards.model_card_names()
    if value in names or Path(value).expanduser().is_dir() or value.count("/") == 1:
        return
    raise RecipeError(
        f"{path}: {value!r} is not a model card, an existing directory or a hub id.{suggest(value, names)} "
        f"Known cards: {', '.join(names)}."
    )


def _card_depth(spec: Any) -> int | None:
    name = spec.get("card") if isinstance(spec, dict) else spec
    if isinstance(name, str) and name in cards.model_card_names():
        return cards.model_card(name).num_layers
    return None


def validate_recipe(cfg: DictConfig | dict, *, origin: str = "recipe") -> dict[str, Any]:
    """Check names, keys and argument types of every section; return the plain resolved dict.

    Every section is checked even after a failure: one problem is raised as is, several as one
    :class:`RecipeError` listing them all (its ``problems`` attribute holds each message)."""
    data = to_dict(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    problems: list[LCFError] = []

    def attempt(check, *args, **kwargs) -> None:
        try:
            check(*args, **kwargs)
        except LCFError as exc:
            problems.append(exc)

    allowed = PLAIN_KEYS | set(COMPONENT_SECTIONS) | set(_settings_sections()) | set(METHOD_SECTIONS)
    for key in data:
        if key not in allowed:
            problems.append(RecipeError(f"{origin}: unknown top-level key {key!r}.{suggest(key, allowed)} Allowed: {', '.join(sorted(allowed))}."))
    for role in ("receiver",) if data.get("sharers") else ("sharer", "receiver"):
        attempt(_check_model_spec, data.get(role), role)
    for section, (kind, from_code) in COMPONENT_SECTIONS.items():
        spec = data.get(section)
        if spec is None:
            continue
        registry = get_registry(kind)
        attempt(registry.check, spec, section, extra={name: None for name in from_code if _accepts(registry, spec, name)})
    for section, cls in _settings_sections().items():
        if data.get(section) is not None:
            attempt(_check_settings, section, cls, data[section])
    attempt(_check_method_sections, data)
    if not problems:  # depths are only meaningful once the models and the layer map are valid
        attempt(_check_layer_map_depths, data)
        attempt(_check_span_scheme, data)
    attempt(_check_losses, data)
    attempt(_check_receiver_adapter, data)
    attempt(_check_finite, data)
    attempt(check_sharers, data, check_model=_check_model_spec, check_depths=_check_layer_map_depths,
            check_component=lambda kind, spec, path: get_registry(kind).check(
                spec, path, extra={"shapes": None} if _accepts(get_registry(kind), spec, "shapes") else None))
    if len(problems) == 1:
        raise problems[0]
    if problems:
        error = RecipeError(f"{origin}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))
        error.problems = [str(p) for p in problems]
        raise error
    return data


def _check_finite(data: dict) -> None:
    """Refuse NaN and infinite numbers anywhere in the recipe (``.nan``, ``.inf`` in YAML)."""
    from lcf.guards import nonfinite_floats

    bad = nonfinite_floats(data)
    if bad:
        raise RecipeError(f"{', '.join(bad)}: NaN or infinite values are not allowed in a recipe; give finite "
                          f"numbers (e.g. trainer.lr: 1.0e-4)")


def _check_method_sections(data: dict) -> None:
    """``init:`` belongs to a per-token translator (``adapter_kind = "per_token"``), which checks them; a fused
    translator takes only ``init: {receiver_adapter: RUN_OR_ADAPTER}`` (:mod:`lcf.training.receiver_adapter`)."""
    import importlib

    from lcf.runtime.kinds import PER_TOKEN, adapter_kind

    present = [s for s in METHOD_SECTIONS if data.get(s) is not None]
    if not present:
        return
    spec = data.get("translator")
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        return  # the translator section reports its own problem
    if adapter_kind(spec["type"]) != PER_TOKEN:
        from lcf.training.receiver_adapter import check_fused_init

        return check_fused_init(data)
    for section in present:
        mod, _, fn = METHOD_SECTIONS[section].partition(":")
        getattr(importlib.import_module(mod), fn)(data[section], section)


def _check_settings(section: str, cls: type, values: Any) -> None:
    from lcf.registry import check_arguments

    if not isinstance(values, dict):
        raise RecipeError(f"{section}: expected a mapping of settings, got {values!r}")
    moved = [key for key in values if key in getattr(cls, "MOVED", {})]
    if moved:  # keys of earlier recipes: one line each, saying the new form
        lines = [f"{section}.{key} moved: " + cls.MOVED[key].replace("W", str(values[key])) for key in moved]
        raise RecipeError("\n".join(lines))
    check_arguments(cls, values, section)
    try:
        cls(**values)
    except RecipeError:
        raise  # already names its key path (e.g. trainer.strategy.stage)
    except (TypeError, ValueError) as exc:
        msg = str(exc)  # settings classes may already name their section ("trainer: lr must be > 0")
        raise RecipeError(msg if msg.startswith(f"{section}:") else f"{section}: {msg}") from exc


def _accepts(registry, spec, name: str) -> bool:
    from lcf.registry import signature_parameters

    try:
        params, _, _ = signature_parameters(registry.get(spec["type"]))
    except (RegistryError, KeyError, TypeError):
        return False
    return name in params


def _span_scheme(kind: str, spec: Any) -> tuple[Any, Any] | None:
    """``(spans, span_tokens)`` a data or compressor spec asks for (its class's defaults filling in), or None."""
    from lcf.registry import signature_parameters

    if not isinstance(spec, dict) or "type" not in spec:
        return None
    try:
        params, _, _ = signature_parameters(get_registry(kind).get(spec["type"]))
    except (RegistryError, KeyError, TypeError):
        return None
    if "spans" not in params:
        return None
    default = {k: params[k].default if k in params else None for k in ("spans", "span_tokens")}
    return spec.get("spans", default["spans"]), spec.get("span_tokens", default["span_tokens"])


def _check_receiver_adapter(data: dict) -> None:
    from lcf.training.receiver_adapter import check_recipe

    check_recipe(data)


def _check_losses(data: dict) -> None:
    """``losses:`` (or its default): known components, their arguments, and what each needs of the recipe."""
    from lcf.training.loss import check_losses

    check_losses(data)


def _check_span_scheme(data: dict) -> None:
    """The compressor is run (runtime, ``lcf eval-xc``) with the span scheme recorded in its config, and
    trained with the one the data cuts: the two must agree, or it learns on one and is used with another."""
    comp, ds = _span_scheme("compressors", data.get("compressor")), _span_scheme("datasets", data.get("data"))
    if comp is None or ds is None or comp[0] is None or ds[0] is None:
        return
    if comp[0] != ds[0] or (comp[0] == "tokens" and comp[1] != ds[1]):
        said = lambda s: s[0] + (f", {s[1]} per span" if s[0] == "tokens" else "")  # noqa: E731
        raise RecipeError(
            f"compressor.spans ({said(comp)}) and data.spans ({said(ds)}) differ: training would cut the context "
            f"as the data says while the exported adapter cuts it as the compressor says; set both the same, "
            f"e.g. data.spans={comp[0]}" + (f" data.span_tokens={comp[1]}" if comp[0] == "tokens" else ""))


def _check_layer_map_depths(data: dict) -> None:
    spec = data.get("layer_map")
    s_depth, r_depth = _card_depth(data.get("sharer")), _card_depth(data.get("receiver"))
    if not spec or s_depth is None or r_depth is None:
        return
    layer_map = get_registry("layer_maps").build(spec, "layer_map")
    try:
        layer_map(s_depth, r_depth)
    except LCFError as exc:
        raise RecipeError(f"layer_map: {exc}") from exc


def _settings_sections() -> dict[str, type]:
    import importlib

    out = {}
    for section, target in SETTINGS_SECTIONS.items():
        mod, _, name = target.partition(":")
        out[section] = getattr(importlib.import_module(mod), name)
    return out
