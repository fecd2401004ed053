"""Component registries: one typed registry per kind of component.

    from lcf.registry import translators

    @translators.register("my_translator")
    class MyTranslator(LowRankTranslator): ...

    translators.build({"type": "my_translator", "rank": 64}, path="translator")

Names resolve in this order: components registered so far (built-in modules are imported lazily on
first use), then third-party plugins declared under the entry-point group ``lcf.<kind>``, then — when
the name contains a dot — a dotted import path ``package.module.Class`` (or ``package.module:Class``).
"""
from __future__ import annotations

import importlib
import inspect
import collections.abc as cabc
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, Union

from lcf.errors import RecipeError, RegistryError, suggest

T = TypeVar("T")
_MISSING = inspect.Parameter.empty


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin_modules: tuple[str, ...] = (), base: type | None = None,
                 singular: str | None = None):
        self.kind = kind
        self.singular = singular or kind[:-1]  # "losses" -> "loss", not "losse"
        self.entry_point_group = f"lcf.{kind}"
        self._builtin_modules = builtin_modules
        self._base = base
        self._items: dict[str, type[T] | Callable[..., T]] = {}
        self._builtins_loaded = False
        self._entry_points_loaded = False

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str | None = None, *, override: bool = False):
        """Class (or factory) decorator registering ``obj`` under ``name`` (default: its __name__)."""

        def deco(obj):
            self.add(name or obj.__name__, obj, override=override)
            return obj

        return deco

    def add(self, name: str, obj, *, override: bool = False) -> None:
        if not name or not isinstance(name, str):
            raise RegistryError(f"{self.kind}: a component name must be a non-empty string, got {name!r}")
        if self._base is not None and inspect.isclass(obj) and not issubclass(obj, self._base):
            raise RegistryError(
                f"{self.kind}: {_qualname(obj)} registered as {name!r} must subclass "
                f"{_qualname(self._base)}; derive from it (or from a registered {self.singular})."
            )
        old = self._items.get(name)
        if old is not None and old is not obj and not override:
            raise RegistryError(
                f"{self.kind}: name {name!r} is already registered by {_qualname(old)}; "
                f"{_qualname(obj)} tried to register it again. Pick another name, or pass "
                f"override=True to replace the existing one on purpose."
            )
        self._items[name] = obj

    # -- lookup -------------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        for mod in self._builtin_modules:
            importlib.import_module(mod)
        self._builtins_loaded = True

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            if ep.name in self._items:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not hide the others
                raise RegistryError(
                    f"{self.kind}: plugin {ep.name!r} ({ep.value}) from entry-point group "
                    f"{self.entry_point_group!r} failed to import: {exc}"
                ) from exc
            self.add(ep.name, obj)

    def names(self) -> list[str]:
        self._load_builtins()
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except RegistryError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, Any]]:
        return [(n, self._items[n]) for n in self.names()]

    def get(self, name: str):
        if not isinstance(name, str):
            raise RegistryError(f"{self.kind}: 'type' must be a string naming a component, got {name!r}")
        self._load_builtins()
        if name in self._items:
            return self._items[name]
        self._load_entry_points()
        if name in self._items:
            return self._items[name]
        if "." in name or ":" in name:
            return self._import_path(name)
        known = sorted(self._items)
        raise RegistryError(
            f"unknown {self.singular} {name!r}.{suggest(name, known)} Registered {self.kind}: "
            f"{', '.join(known) or '(none)'}. Register one with @lcf.registry.{self.kind}.register(...) "
            f"or give a dotted import path such as 'my_pkg.module.MyClass'."
        )

    def _import_path(self, path: str):
        mod_name, _, attr = path.replace(":", ".").rpartition(".")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise RegistryError(
                f"{self.kind}: could not import module {mod_name!r} for type {path!r}: {exc}. "
                f"Make sure the module is importable (installed, or on PYTHONPATH)."
            ) from exc
        try:
            obj = getattr(module, attr)
        except AttributeError as exc:
            have = [n for n in dir(module) if not n.startswith("_")]
            raise RegistryError(
                f"{self.kind}: module {mod_name!r} has no attribute {attr!r}.{suggest(attr, have)}"
            ) from exc
        if self._base is not None and inspect.isclass(obj) and not issubclass(obj, self._base):
            raise RegistryError(f"{self.kind}: {path!r} is not a subclass of {_qualname(self._base)}")
        return obj

    # -- building -----------------------------------------------------------------------------
    def check(self, spec: Mapping[str, Any], path: str, *, extra: Mapping[str, Any] | None = None):
        """Validate ``spec`` (``{'type': name, **kwargs}``) without building; return (cls, kwargs)."""
        if not isinstance(spec, Mapping):
            raise RecipeError(
                f"{path}: expected a mapping with a 'type' key naming a {self.singular}, got {spec!r}"
            )
        if "type" not in spec:
            raise RecipeError(
                f"{path}: missing 'type'. Expected one of: {', '.join(self.names())} (or a dotted path)."
            )
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        try:
            cls = self.get(spec["type"])
        except RegistryError as exc:
            raise RecipeError(f"{path}.type: {exc}") from exc
        check_arguments(cls, {**kwargs, **(extra or {})}, path, provided_by_code=set(extra or {}))
        nested = getattr(cls, "check_spec", None)  # components holding specs of others check them too
        if callable(nested):
            nested(kwargs, path)
        return cls, kwargs

    def build(self, spec: Mapping[str, Any], path: str | None = None, **extra) -> T:
        """Build a component from ``spec``; ``extra`` are arguments the caller supplies (sizes, ...)."""
        path = path or self.singular
        cls, kwargs = self.check(spec, path, extra=extra)
        try:
            return cls(**kwargs, **extra)
        except Exception as exc:
            raise RecipeError(f"{path}: building {spec['type']!r} failed: {type(exc).__name__}: {exc}") from exc


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def signature_parameters(cls) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Parameters accepted by ``cls(...)``, following ``**kwargs`` up the MRO of subclasses.

    Returns (parameters, type hints, accepts_anything)."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    targets = [c.__init__ for c in cls.__mro__ if "__init__" in vars(c)] if inspect.isclass(cls) else [cls]
    for fn in targets:
        if fn is object.__init__:
            break
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return params, hints, True
        try:
            fn_hints = typing.get_type_hints(fn)
        except Exception:
            fn_hints = {}
        var_kw = False
        for p in sig.parameters.values():
            if p.name == "self" or p.kind is p.VAR_POSITIONAL:
                continue
            if p.kind is p.VAR_KEYWORD:
                var_kw = True
                continue
            if p.name not in params:
                params[p.name] = p
                if p.name in fn_hints:
                    hints[p.name] = fn_hints[p.name]
        if not var_kw:
            return params, hints, False
    return params, hints, not inspect.isclass(cls)


def check_arguments(cls, kwargs: Mapping[str, Any], path: str, provided_by_code: set[str] = frozenset()):
    params, hints, anything = signature_parameters(cls)
    name = getattr(cls, "__name__", str(cls))
    if not anything:
        for key in kwargs:
            if key not in params:
                user_keys = [p for p in params if p not in provided_by_code]
                raise RecipeError(
                    f"{path}.{key}: {name} has no argument {key!r}.{suggest(key, user_keys)} "
                    f"Accepted: {', '.join(user_keys) or '(none)'}."
                )
    for pname, p in params.items():
        if p.default is _MISSING and pname not in kwargs:
            raise RecipeError(f"{path}.{pname}: required argument of {name} is missing; add `{pname}: ...`.")
    for key, value in kwargs.items():
        if key in hints and key not in provided_by_code and not type_matches(value, hints[key]):
            raise RecipeError(
                f"{path}.{key}: expected {type_name(hints[key])}, got {type(value).__name__} {value!r}."
            )


def type_matches(value: Any, hint: Any) -> bool:
    """Loose runtime check of recipe values (YAML scalars, lists, mappings) against an annotation."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(type_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, Path):
        return isinstance(value, (str, Path))
    if hint is bool:
        return isinstance(value, bool)
    if origin in (list, tuple, cabc.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if args and origin is not tuple:
            return all(type_matches(v, args[0]) for v in value)
        return True
    if origin in (dict, cabc.Mapping) or hint is dict:
        return isinstance(value, Mapping)
    if inspect.isclass(hint):
        return isinstance(value, hint) or isinstance(value, Mapping)  # mappings may build sub-objects
    return True


def type_name(hint: Any) -> str:
    if inspect.isclass(hint) and typing.get_origin(hint) is None:
        return hint.__name__
    return str(hint).replace("typing.", "")


# -- the registries ------------------------------------------------------------------------------
# Built-in modules are imported on first lookup, so `import lcf` stays light.
translators: Registry = Registry("translators", ("lcf.translators",))
compressors: Registry = Registry("compressors", ("lcf.compressors",))
layer_maps: Registry = Registry("layer_maps", ("lcf.align.layers",))
token_aligners: Registry = Registry("token_aligners", ("lcf.align.tokens",))
datasets: Registry = Registry("datasets", ("lcf.data.instruct", "lcf.data.task_data", "lcf.data.fact_transfer",
                                           "lcf.data.xc.qa", "lcf.data.chat_hub", "lcf.data.xc.mix"))
tasks: Registry = Registry("tasks", ("lcf.eval.tasks",))
# loss terms of a recipe's `losses:` list (lcf.training.loss.Loss subclasses; checked when a recipe builds them)
losses: Registry = Registry("losses", ("lcf.training.loss_terms", "lcf.token_map.losses"), singular="loss")
# a receiver-side adapter composed with the translator (recipe `receiver_adapter:`; lcf.runtime.receiver_lora)
receiver_adapters: Registry = Registry("receiver_adapters", ("lcf.runtime.receiver_lora",),
                                       singular="receiver adapter")

REGISTRIES: dict[str, Registry] = {
    r.kind: r for r in (translators, compressors, layer_maps, token_aligners, datasets, tasks, losses,
                        receiver_adapters)
}


def get_registry(kind: str) -> Registry:
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise RegistryError(f"unknown component kind {kind!r}.{suggest(kind, REGISTRIES)}") from None
