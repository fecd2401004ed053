"""``load_adapter``: read an adapter folder's config and hand it to the loader of its kind.

The kind comes from the translator class (:mod:`lcf.runtime.kinds`): ``fused`` adapters load as
:class:`~lcf.runtime.adapter.Adapter`, ``per_token`` ones as :class:`~lcf.runtime.token_adapter.TokenAdapter`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lcf.runtime.adapter import Adapter, load_fused_adapter
from lcf.runtime.format import read_config
from lcf.runtime.kinds import FUSED, PER_TOKEN, adapter_kind
from lcf.runtime.models import check_device, check_dtype
from lcf.runtime.token_adapter import TokenAdapter, load_token_adapter

#: adapter kind (lcf.runtime.kinds) -> the function that loads such a folder
LOADERS: dict[str, Callable[..., Any]] = {FUSED: load_fused_adapter, PER_TOKEN: load_token_adapter}


def load_adapter(path: str | Path, *, sharer: Any = None, receiver: Any = None, device: str | None = None,
                 dtype: str | None = None, check_fingerprints: bool = True, with_sharer: bool = True,
                 with_receiver: bool = True) -> Adapter | TokenAdapter:
    """Load an exported adapter. ``sharer``/``receiver``: a model spec (card name, local dir, hub id),
    a ``LoadedModel``, a ``(model, tokenizer)`` tuple, or None for the models named in the adapter.
    ``with_sharer=False`` skips the sharer (a process that only receives latent messages);
    ``with_receiver=False`` the receiver model (a process that only sends per-token messages).
    Per-token adapters (:mod:`lcf.runtime.token_kv`) load as a
    :class:`~lcf.runtime.token_adapter.TokenAdapter` with the same ``send`` / ``receive``."""
    check_dtype(dtype)
    check_device(device)
    folder = Path(path)
    cfg = read_config(folder)
    loader = LOADERS[adapter_kind(cfg["translator"]["type"])]
    return loader(folder, cfg, sharer=sharer, receiver=receiver, device=device, dtype=dtype,
                  check_fingerprints=check_fingerprints, with_sharer=with_sharer, with_receiver=with_receiver)
