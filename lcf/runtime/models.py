"""The models an adapter runs with: resolving the specs a caller gives, and the checks made before use.

Shared by every adapter kind (:mod:`lcf.runtime.adapter`, :mod:`lcf.runtime.token_adapter`).
"""
from __future__ import annotations

from typing import Any

import torch

from lcf.models.fingerprint import fingerprint
from lcf.models.loading import LoadedModel, load_model
from lcf.runtime.format import AdapterError

DTYPES = ("float32", "bfloat16", "float16")  # what load_adapter(dtype=...) accepts (or the torch dtypes, or None)


def check_dtype(dtype: Any) -> None:
    """Refuse a model dtype lcf cannot load the models in, naming the accepted ones."""
    if dtype is None or dtype in DTYPES or dtype in tuple(getattr(torch, d) for d in DTYPES):
        return
    raise AdapterError(f"dtype={dtype!r} is not supported; use one of {', '.join(DTYPES)} (or None for each model "
                       f"card's dtype)")


def check_device(device: Any) -> None:
    """Refuse a device this machine does not have, before any model is loaded."""
    kind = str(device).split(":")[0] if device is not None else None
    if kind == "cuda" and not torch.cuda.is_available():
        raise AdapterError(f"device={device!r}: no CUDA device is available here (torch {torch.__version__}); use "
                           f"device='cpu' or None")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AdapterError(f"device={device!r}: MPS is not available here; use device='cpu' or None")


def check_finite_cache(i: int, view: Any) -> Any:
    """A ``sharer_transform`` that refuses a sharer cache with NaN or infinite values (a model run in a
    dtype whose range it overflows, e.g. float16 for some models), which would silently spoil answers."""
    for layer, (k, v) in enumerate(zip(view.keys, view.values)):
        if not (bool(torch.isfinite(k).all()) and bool(torch.isfinite(v).all())):
            raise AdapterError(
                f"sharer {i}'s KV cache holds NaN or infinite values (layer {layer}, dtype {str(k.dtype)[6:]}): the "
                f"sharer overflows in this dtype. Load the adapter with dtype='float32' (or 'bfloat16' on hardware "
                f"that supports it)"
            )
    return view


def as_loaded(model: Any, default: str, dtype: Any) -> LoadedModel:
    """``model`` as a :class:`LoadedModel`: one already loaded, a ``(model, tokenizer)`` tuple, a model spec
    (card name, local folder, hub id), or None for ``default`` (the model the adapter names)."""
    if model is None:
        model = default
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, tuple) and len(model) == 2:
        return LoadedModel(name=getattr(model[0], "name_or_path", "model"), model=model[0], tokenizer=model[1],
                           card=None, path="")
    return load_model(model, dtype=dtype)


def check_fingerprint(role: str, expected: dict, lm: LoadedModel) -> None:
    """Refuse a model whose fingerprint differs from the one the adapter was trained with."""
    got = fingerprint(lm.model, lm.tokenizer)
    want = expected.get("fingerprint", {})
    if got != want:
        raise AdapterError(
            f"this adapter was trained for {role} {expected.get('name')!r} with fingerprint {want}, but the "
            f"{role} given ({lm.name!r}) has fingerprint {got}. Load the adapter with the models it was "
            f"trained for (or pass check_fingerprints=False if you know the models are equivalent)."
        )
