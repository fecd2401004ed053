"""What every trainable component class shares: its constructor arguments are recorded.

Translators and compressors are rebuilt from ``adapter_config.json`` as
``type(c)(shapes=..., **c.init_args)``, so their ``__init__`` arguments (all but ``shapes``) are
recorded on the outermost call — whatever the subclass depth — by :func:`recording_init`.
"""
from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any

from lcf.errors import LCFError


def recording_init(init: Callable, *, extra_kwarg: str | None = None,
                   after: Callable[[Any, Any], None] | None = None) -> Callable:
    """Wrap a component's ``__init__`` so the outermost call records its arguments in
    ``self._lcf_init_args``. ``extra_kwarg``: a keyword popped before the call (not an argument of
    ``init``); ``after(self, value_of_extra_kwarg)`` runs once the outermost ``__init__`` returns."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        depth = self.__dict__.get("_lcf_init_depth", 0)
        extra = kwargs.pop(extra_kwarg, None) if depth == 0 and extra_kwarg else None
        if depth == 0:
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = sig.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif kind is inspect.Parameter.VAR_POSITIONAL:
                    if value:
                        raise TypeError(f"{type(self).__name__}: pass options by keyword, not *args")
                elif name != "shapes":
                    recorded[name] = value
            self.__dict__["_lcf_init_args"] = recorded
        self.__dict__["_lcf_init_depth"] = depth + 1
        try:
            init(self, *args, **kwargs)
        finally:
            self.__dict__["_lcf_init_depth"] = depth
        if depth == 0 and after is not None:
            after(self, extra)

    return wrapper


def recorded_args(component: Any) -> dict[str, Any]:
    """The recorded constructor arguments of ``component``; raises when one is not JSON-serialisable."""
    args = dict(component.__dict__.get("_lcf_init_args", {}))
    for k, v in args.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError) as exc:
            raise LCFError(
                f"{type(component).__name__}: constructor argument {k}={v!r} is not JSON-serialisable, so it cannot "
                f"be exported; use plain numbers, strings, lists or dicts"
            ) from exc
    return args
