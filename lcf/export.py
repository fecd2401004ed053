"""`lcf export RUN_OR_CKPT OUT_DIR`: a standalone adapter folder.

    OUT_DIR/adapter.safetensors     translator tensors only
    OUT_DIR/adapter_config.json     everything needed to rebuild and check it (keys: lcf.runtime.format.KNOWN_KEYS)
    OUT_DIR/receiver_lora/          recipes with a `receiver_adapter:` only: the receiver LoRA as a PEFT folder

The folder is written to a temporary sibling and swapped into place under a lock, so a reader never sees
half an adapter (:mod:`lcf.atomic_folder`). An existing adapter folder is replaced; a file, or a folder
holding anything else, is refused unless ``overwrite=True`` (``lcf export --overwrite``). Reading it needs
only torch, transformers and safetensors (``lcf.runtime.load_adapter``).

A checkpoint is a Lightning ``.ckpt`` file or, from DeepSpeed runs, a ZeRO checkpoint *directory*
(``ckpt/last.ckpt/`` with ``latest`` and ``checkpoint/`` inside): its shards are gathered into full fp32
tensors (needs DeepSpeed installed, not a GPU). Inside a distributed job (torch.distributed initialised)
rank 0 alone writes the adapter; the other ranks wait for it and return the same path.
"""
from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import lcf
from lcf.atomic_folder import check_target, publish_folder
from lcf.errors import LCFError
from lcf.models.fingerprint import fingerprint
from lcf.export_card import CARD_NAME, adapter_card, gate_summary
from lcf.runtime.kinds import PER_TOKEN, adapter_kind
from lcf.runtime.format import (COMPRESSOR_PREFIX, CONFIG_NAME, FORMAT_VERSION, RECEIVER_LORA_FOLDER,
                                SHARERS_PREFIX, WEIGHTS_NAME)

# what an adapter folder may hold; the first file marks it as one (anything else is the user's)
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md", RECEIVER_LORA_FOLDER)
TRANSLATOR_PREFIX = "communicator.translators.0."
RECEIVER_LORA_PREFIX = "communicator.receiver_adapter."  # the receiver LoRA of a composed run
TOKEN_MAP_PREFIX = "translator."  # lcf.token_map.module.TokenMapModule.translator
COMPRESSOR_STATE_PREFIX = "communicator.compressors.0."


def model_identity(loaded) -> dict[str, Any]:
    return {"name": loaded.name, "source": loaded.path, "fingerprint": fingerprint(loaded.model, loaded.tokenizer)}


def adapter_config(translator, *, translator_type: str, pair, recipe: dict, training: dict | None = None,
                   compressor=None) -> dict:
    data = recipe.get("data") or {}
    modules = [translator] + ([compressor] if compressor is not None else [])
    return {
        "format_version": FORMAT_VERSION,
        "lcf_version": lcf.__version__,
        "translator": {"type": translator_type, "args": translator.init_args},
        "compressor": {"type": recipe["compressor"]["type"], "args": compressor.init_args} if compressor else None,
        "shapes": translator.shapes.to_dict(),
        "layer_map": {"spec": recipe.get("layer_map") or {"type": "terminal"}, "sharer_of": pair.layer_map.to_list()},
        "token_alignment": recipe.get("token_alignment") or {"type": "maximal_coverage"},
        "templates": {"receiver": data.get("receiver_template", "auto"), "sharer": data.get("sharer_template", "auto")},
        "sharer": model_identity(pair.sharer),
        "receiver": model_identity(pair.receiver),
        "dtype": str(next(translator.parameters()).dtype).replace("torch.", ""),
        "num_parameters": sum(m.num_parameters() for m in modules),
        "size_bytes": sum(_state_bytes(m) for m in modules),
        "training": training or {},
    }


def _state_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def several_sharers_config(config: dict, recipe: dict, pairs: list, translators: list) -> dict:
    """``config`` (sharer 0's, so one-sharer readers find their keys) plus ``sharers``: every sharer's
    translator, shapes, layer map, token alignment, template and identity, and the summed size."""
    from lcf.several import sharer_entries

    entries = []
    for e, pair, tr in zip(sharer_entries(recipe), pairs, translators):
        entries.append({
            "translator": {"type": e["translator"]["type"], "args": tr.init_args}, "shapes": tr.shapes.to_dict(),
            "layer_map": {"spec": e["layer_map"], "sharer_of": pair.layer_map.to_list()},
            "token_alignment": e["token_alignment"], "templates": {"sharer": e["sharer_template"]},
            "sharer": model_identity(pair.sharer), "num_parameters": tr.num_parameters(),
            "tensor_prefix": f"{SHARERS_PREFIX}{len(entries)}.",
        })
    extra = translators[1:]
    return config | {
        "sharers": entries, "combine": (recipe.get("trainer") or {}).get("combine", "sequential"),
        "num_parameters": config["num_parameters"] + sum(t.num_parameters() for t in extra),
        "size_bytes": config["size_bytes"] + sum(_state_bytes(t) for t in extra),
    }


def adapter_tensors(translators, compressor=None) -> dict[str, torch.Tensor]:
    """The tensors of ``adapter.safetensors``: one translator's unprefixed (the one-sharer format), or
    several under ``sharers.<i>.``; compressor tensors under ``compressor.``."""
    many = isinstance(translators, (list, tuple)) and len(translators) > 1
    modules = list(translators) if isinstance(translators, (list, tuple)) else [translators]
    tensors = {}
    for i, tr in enumerate(modules):
        prefix = f"{SHARERS_PREFIX}{i}." if many else ""
        tensors |= {prefix + k: v.detach().to("cpu").contiguous() for k, v in tr.state_dict().items()}
    if compressor is not None:
        tensors |= {COMPRESSOR_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in compressor.state_dict().items()}
    return tensors


def write_adapter(out_dir: str | Path, translator, config: dict, compressor=None, *, overwrite: bool = False,
                  receiver_lora=None) -> Path:
    """Atomically write ``adapter.safetensors`` + ``adapter_config.json`` into ``out_dir`` (compressor
    tensors, if any, under the ``compressor.`` prefix). An existing adapter there is replaced; a file or a
    folder holding anything else is refused unless ``overwrite`` (see :mod:`lcf.atomic_folder`).
    ``receiver_lora``: a :class:`~lcf.runtime.receiver_lora.ReceiverLoRA` written as a PEFT folder
    ``receiver_lora/`` (or such a folder, copied as it is)."""
    from safetensors import SafetensorError

    from lcf.export_checks import check_before_writing, save_failure

    tensors = adapter_tensors(translator, compressor)
    lora_tensors = receiver_lora.peft_state() if hasattr(receiver_lora, "peft_state") else {}
    check_before_writing(out_dir, tensors | lora_tensors)  # finite tensors, room on the disk
    with publish_folder(out_dir, ADAPTER_FILES, overwrite=overwrite) as tmp:
        try:
            save_file(tensors, str(tmp / WEIGHTS_NAME),
                      metadata={"format": "pt", "lcf_format_version": str(FORMAT_VERSION)})
            if lora_tensors:
                receiver_lora.save_peft(tmp / RECEIVER_LORA_FOLDER, base_model=config["receiver"].get("name"))
            elif receiver_lora is not None:
                import shutil

                shutil.copytree(receiver_lora, tmp / RECEIVER_LORA_FOLDER)
        except (OSError, SafetensorError) as exc:  # a full disk, a file-size limit
            raise save_failure(out_dir, exc) from exc
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=False))
        (tmp / CARD_NAME).write_text(adapter_card(config, path=out_dir, gates=gate_summary(translator)))
        for f in tmp.rglob("*"):  # an adapter is meant to be shared
            f.chmod(0o755 if f.is_dir() else 0o644)
    return Path(out_dir).resolve()


def is_zero_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a DeepSpeed ZeRO checkpoint directory (what Lightning saves as ``*.ckpt/``)."""
    return path.is_dir() and ((path / "latest").is_file() or (path / "checkpoint").is_dir())


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``{"state_dict": ..., "global_step": ...}`` of a Lightning checkpoint file or ZeRO directory."""
    path = Path(path)
    if not is_zero_checkpoint(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    if not deepspeed_installed():
        raise LCFError(
            f"{path} is a DeepSpeed ZeRO checkpoint (a directory of per-rank shards); gathering its full weights "
            f"needs DeepSpeed: `pip install 'lcf[deepspeed]'` (no GPU needed for export)."
        )
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    with tempfile.TemporaryDirectory(prefix="lcf-zero-") as tmp:
        return convert_zero_checkpoint_to_fp32_state_dict(path, Path(tmp) / "fp32.ckpt")


def translator_state(state_dict: dict[str, torch.Tensor], prefix: str = TRANSLATOR_PREFIX) -> dict[str, torch.Tensor]:
    """The first translator's tensors of a LightningModule state dict (wrapper prefixes ignored);
    ``prefix=COMPRESSOR_STATE_PREFIX`` gives the first sharer's compressor instead."""
    out = {}
    for key, value in state_dict.items():
        head, sep, tail = key.partition(prefix)
        if sep and head in ("", "module.", "_forward_module.", "module._forward_module."):
            out[tail] = value
    return out


def _find_checkpoint(run_or_ckpt: Path, which: str) -> tuple[Path, Path]:
    """Return (checkpoint file or ZeRO directory, run dir)."""
    if run_or_ckpt.is_file() or is_zero_checkpoint(run_or_ckpt):
        run = run_or_ckpt.parent.parent if run_or_ckpt.parent.name == "ckpt" else run_or_ckpt.parent
        return run_or_ckpt, run
    ckdir = run_or_ckpt / "ckpt"
    if not ckdir.is_dir():
        raise LCFError(f"{run_or_ckpt} is neither a checkpoint file nor a run directory with ckpt/ inside")
    best = sorted(p for p in ckdir.glob("*.ckpt") if p.name != "last.ckpt")
    if which == "best" and best:
        return best[-1], run_or_ckpt
    last = ckdir / "last.ckpt"
    if not last.exists():
        raise LCFError(f"no checkpoint in {ckdir}: train first (`lcf train RECIPE`)")
    return last, run_or_ckpt


def _check_out_dir(out: Path, ckpt: Path, run: Path, overwrite: bool) -> None:
    """Refuse an output path that is or holds the checkpoint, or one :func:`write_adapter` would refuse."""
    from lcf.paths import check_output_path

    check_output_path(out, "export target", sibling=True)  # writable, not a link loop
    out, ckpt = out.resolve(), ckpt.resolve()
    if out == ckpt or out in ckpt.parents:
        raise LCFError(f"export target {out} holds the checkpoint {ckpt}: replacing it would delete it; export "
                       f"to another folder (e.g. {run / 'adapter'})")
    check_target(out, ADAPTER_FILES, overwrite=overwrite)


def _process_group():
    """torch.distributed when this process is one of several in an initialised job, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def export(run_or_ckpt: str | Path, out_dir: str | Path, *, which: str = "best", overwrite: bool = False) -> Path:
    """Export the translator of a training run (or one checkpoint) as an adapter folder.

    In a distributed job every rank may call it: rank 0 writes, the others wait and get the same path
    (or an LCFError naming rank 0's failure)."""
    dist = _process_group()
    if dist is None:
        return _export(run_or_ckpt, out_dir, which=which, overwrite=overwrite)
    result: list[Any] = [None]
    failure: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            result[0] = str(_export(run_or_ckpt, out_dir, which=which, overwrite=overwrite))
        except BaseException as exc:  # the other ranks must still be released
            failure, result[0] = exc, f"failed: {type(exc).__name__}: {exc}"
    dist.broadcast_object_list(result, src=0)  # the other ranks wait here for rank 0
    if failure is not None:
        raise failure
    if result[0].startswith("failed: "):
        raise LCFError(f"export on rank 0 {result[0]}")
    return Path(result[0])


def _export(run_or_ckpt: str | Path, out_dir: str | Path, *, which: str = "best", overwrite: bool = False) -> Path:
    from lcf.config import load_recipe, validate_recipe
    from lcf.pair import build_pair
    from lcf.several import build_pairs, build_translators, entry_recipe, has_several, sharer_entries
    from lcf.training.run import build_compressor, build_translator

    ckpt_path, run = _find_checkpoint(Path(run_or_ckpt), which)
    _check_out_dir(Path(out_dir), ckpt_path, run, overwrite)  # before any model is loaded
    from lcf.export_checks import check_checkpoint_finite

    ckpt = check_checkpoint_finite(load_checkpoint(ckpt_path), ckpt_path)  # also before any model
    recipe_file = run / "recipe.yaml"
    if not recipe_file.exists():
        raise LCFError(f"{recipe_file} is missing: export needs the resolved recipe that training saved beside ckpt/")
    recipe = validate_recipe(load_recipe(recipe_file), origin=str(recipe_file))
    training = _training_record(recipe, run, ckpt_path, ckpt)
    if adapter_kind(recipe["translator"]["type"]) == PER_TOKEN:
        from lcf.token_map.train import build_token_map  # per-token rows: the module's tensors are the map's

        pair = build_pair(recipe)
        low = build_token_map(recipe, pair)
        low.load_state_dict(translator_state(ckpt["state_dict"], TOKEN_MAP_PREFIX), strict=True)
        return export_token_map(low, out_dir, sharer=pair.sharer, receiver=pair.receiver, training=training,
                                translator_type=recipe["translator"]["type"], overwrite=overwrite)
    several = has_several(recipe)  # `sharers:` list: one translator per sharer, all in this adapter
    pairs = build_pairs(recipe) if several else [build_pair(recipe)]
    all_translators = build_translators(recipe, pairs) if several else [build_translator(recipe, pairs[0])]
    pair, translator = pairs[0], all_translators[0]
    for i, tr in enumerate(all_translators):
        state, keep = translator_state(ckpt["state_dict"], f"communicator.translators.{i}."), tr.state_dict().keys()
        buffers = {name for name, _ in tr.named_buffers()}  # ZeRO gathering may add non-persistent ones
        tr.load_state_dict({k: v for k, v in state.items() if k in keep or k not in buffers}, strict=True)
    compressor = build_compressor(recipe, pair)
    if compressor is not None:
        compressor.load_state_dict(translator_state(ckpt["state_dict"], COMPRESSOR_STATE_PREFIX), strict=True)
    first = entry_recipe(recipe, sharer_entries(recipe)[0]) if several else recipe
    config = adapter_config(translator, translator_type=first["translator"]["type"], pair=pair, recipe=first,
                            training=training, compressor=compressor)
    if several:
        config = several_sharers_config(config, recipe, pairs, all_translators)
    lora = None
    if recipe.get("receiver_adapter"):  # composed with a receiver LoRA: a PEFT folder beside the translator(s)
        from lcf.registry import receiver_adapters

        lora = receiver_adapters.build(recipe["receiver_adapter"], "receiver_adapter", model=pair.receiver.model)
        lora.load_state_dict(translator_state(ckpt["state_dict"], RECEIVER_LORA_PREFIX), strict=True)
        config |= {"receiver_adapter": lora.config_record(), "num_parameters": config["num_parameters"]
                   + lora.num_parameters(), "size_bytes": config["size_bytes"] + lora.size_bytes()}
    return write_adapter(out_dir, all_translators if several else translator, config, compressor=compressor,
                         overwrite=overwrite, receiver_lora=lora)


def _training_record(recipe: dict, run: Path, ckpt_path: Path, ckpt: dict) -> dict[str, Any]:
    """What the adapter config and card say about the training run."""
    training = {
        "checkpoint": ckpt_path.name, "global_step": ckpt.get("global_step"), "recipe": recipe.get("name"),
        "data": recipe.get("data"), "trainer": recipe.get("trainer"), "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "torch": torch.__version__, "transformers": metadata.version("transformers"),
    }
    for key in ("init", "losses"):  # the per-token map's sections
        if recipe.get(key) is not None:
            training[key] = recipe[key]
    summary_file = run / "summary.json"
    if summary_file.exists():
        training["summary"] = json.loads(summary_file.read_text())
    return training


def token_map_config(low, *, sharer, receiver, training: dict | None = None, translator_type: str = "token_map",
                     templates: dict[str, str] | None = None) -> dict[str, Any]:
    """``adapter_config.json`` of a per-token map (``sharer`` / ``receiver``: loaded models, for their identity)."""
    args = low.init_args if hasattr(low, "init_args") else {"rank": low.rank}
    return {"format_version": FORMAT_VERSION, "lcf_version": lcf.__version__,
            "translator": {"type": translator_type, "args": args},
            "shapes": {"sharer_row": int(low.down.shape[0]), "receiver_row": int(low.up.shape[1])},
            "sharer": model_identity(sharer), "receiver": model_identity(receiver),
            "templates": templates or {"receiver": "auto", "sharer": "auto"},
            "token_alignment": {"type": "maximal_coverage"}, "dtype": "float32",
            "num_parameters": low.down.numel() + low.up.numel(),
            "size_bytes": sum(t.numel() * 4 for t in low.state_dict().values()), "training": training or {}}


def export_token_map(low, out_dir: str | Path, *, sharer, receiver, training: dict | None = None,
                     translator_type: str = "token_map", overwrite: bool = False) -> Path:
    """Write a per-token map as an adapter folder, atomically, with its card (the same writer as every adapter)."""
    low = low.to("cpu", torch.float32)
    config = token_map_config(low, sharer=sharer, receiver=receiver, training=training,
                              translator_type=translator_type)
    return write_adapter(out_dir, low, config, overwrite=overwrite)
