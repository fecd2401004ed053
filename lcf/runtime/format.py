"""The adapter folder format: file names, the config's keys, and reading both files with clear errors."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from lcf.errors import LCFError

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
COMPRESSOR_PREFIX = "compressor."
SHARERS_PREFIX = "sharers."  # adapters with several sharers: translator i's tensors under "sharers.<i>."
RECEIVER_LORA_FOLDER = "receiver_lora"  # a composed adapter's receiver LoRA, a PEFT folder (lcf.runtime.receiver_lora)
KNOWN_KEYS = {
    "format_version", "lcf_version", "translator", "compressor", "shapes", "layer_map", "token_alignment",
    "templates", "sharer", "receiver", "dtype", "num_parameters", "size_bytes", "training",
    "sharers", "combine",  # several sharers: one entry each (sharer 0 is also the top-level keys), how edits combine
    "receiver_adapter",  # a LoRA on the receiver ({type, args, folder, num_parameters}), composed with the translator
}

# keys the runtime reads, with their JSON types (nested keys joined by dots)
REQUIRED_KEYS: dict[str, type] = {
    "translator": dict, "translator.type": str, "shapes": dict, "sharer": dict, "sharer.name": str,
    "receiver": dict, "receiver.name": str,
}


class AdapterError(LCFError, ValueError):
    """An adapter folder that cannot be loaded (missing, corrupted, or for other models)."""


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise AdapterError(f"{folder} is not an lcf adapter: {CONFIG_NAME} is missing (export one with `lcf export`)")
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise AdapterError(f"{path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}): "
                           f"the file is damaged or not an adapter config; re-export the adapter") from exc
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path} is not valid JSON ({exc}); re-export the adapter") from exc
    except OSError as exc:
        raise AdapterError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions, or re-export "
                           f"the adapter") from exc
    if not isinstance(cfg, dict):
        raise AdapterError(f"{path} must hold a JSON object, got {type(cfg).__name__}; re-export the adapter")
    if "format_version" not in cfg:
        raise AdapterError(f"{path} lacks the required key 'format_version': it was not written by `lcf export` "
                           f"or was edited; re-export the adapter")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise AdapterError(f"{path}: format_version {cfg.get('format_version')!r} is not supported (expected {FORMAT_VERSION}); upgrade lcf")
    check_required(cfg, path)
    unknown = sorted(set(cfg) - KNOWN_KEYS)
    if unknown:
        log.warning("%s: ignoring unknown keys %s (written by a newer lcf?)", path, unknown)
    return cfg


def check_required(cfg: dict[str, Any], path: Path) -> None:
    """Refuse a config that lacks a key the runtime needs (each ``a.b`` names a nested key)."""
    for key, kind in REQUIRED_KEYS.items():
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None or not isinstance(node, kind):
            got = "missing" if node is None else f"a {type(node).__name__}"
            raise AdapterError(f"{path}: required key {key!r} is {got} (expected a {kind.__name__}); the config "
                               f"is incomplete or was edited by hand: re-export the adapter with `lcf export`")


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterError(f"{path} is missing: the adapter folder is incomplete; re-export it")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(
            f"{path} is truncated or corrupted ({type(exc).__name__}: {exc}); re-export or re-download the adapter"
        ) from exc
    from lcf.guards import describe_names, nonfinite_tensors

    bad = nonfinite_tensors(state)
    if bad:
        raise AdapterError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values ({describe_names(bad)}): the "
                           f"adapter was exported from a diverged run or was damaged; export an earlier checkpoint "
                           f"of its run, or re-download it")
    return state


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(translator tensors, compressor tensors) of an adapter file; compressor keys start with
    :data:`COMPRESSOR_PREFIX`."""
    comp = {k[len(COMPRESSOR_PREFIX):]: v for k, v in state.items() if k.startswith(COMPRESSOR_PREFIX)}
    return {k: v for k, v in state.items() if not k.startswith(COMPRESSOR_PREFIX)}, comp


def file_fingerprint(path: Path) -> str:
    """Short sha256 of a file (messages name the adapter weights that made them)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
