"""What `lcf eval` compares: adapters named by folder, run or recipe, and the systems built around them.

    adapters = [load_adapter(resolve_adapter(x)) for x in ("recipes/quickstart.yaml", "adapters/c2c")]
    systems = build_systems(adapters, labels, ["receiver", "sharer", "text", "adapter", "zero"], text_tokens=[50])
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lcf.errors import LCFError
from lcf.eval.baselines import LoRAReceiver, ReceiverLoRAAlone, TextRelay
from lcf.eval.systems import AdapterSystem, ReceiverAlone, SharerAlone, System
from lcf.runtime.format import CONFIG_NAME

#: System families `lcf eval --systems` knows, in report order. ``lora_alone``: a composed adapter's receiver LoRA
#: without its translator (adapters without one have none; their other systems are unchanged).
SYSTEM_KINDS: tuple[str, ...] = ("receiver", "sharer", "text", "lora", "lora_alone", "adapter", "zero",
                                  "mismatched")
RECIPE_SUFFIXES = (".yaml", ".yml")


def resolve_adapter(spec: str | Path, *, which: str = "best") -> Path:
    """An adapter folder from an exported folder, a run directory or a recipe.

    A run directory (``ckpt/`` inside) or a recipe (its run directory ``<output_dir>/<name>``) is
    exported to ``<run>/adapter`` unless an adapter newer than every checkpoint is already there."""
    p = Path(spec)
    if (p / CONFIG_NAME).is_file():
        return p
    if p.suffix in RECIPE_SUFFIXES:
        if not p.is_file():
            raise LCFError(f"recipe {p} does not exist")
        from lcf.config import load_recipe, validate_recipe
        from lcf.training.run import run_dir_of

        run = run_dir_of(validate_recipe(load_recipe(p), origin=str(p)))
        if not (run / "ckpt").is_dir():
            raise LCFError(f"recipe {p} has not been trained yet (no checkpoints in {run / 'ckpt'}); run "
                           f"`lcf train {p}` first, or pass an exported adapter folder")
        p = run
    if not (p / "ckpt").is_dir():
        raise LCFError(f"{p} is neither an adapter folder ({CONFIG_NAME} inside), a run directory (ckpt/ inside) "
                       f"nor a recipe (.yaml); export an adapter with `lcf export RUN OUT_DIR`")
    out = p / "adapter"
    newest = max((c.stat().st_mtime for c in (p / "ckpt").glob("*.ckpt")), default=0.0)
    if not (out / CONFIG_NAME).is_file() or (out / CONFIG_NAME).stat().st_mtime < newest:
        from lcf.export import export

        export(p, out, which=which)
    return out


def pair_systems(pair: str, chosen: Sequence[str], *, text_tokens: Sequence[int] = (50,), device: str | None = None,
                 dtype: str | None = None) -> list[System]:
    """The baselines of a pair card without any adapter: receiver alone, sharer alone, text relays
    (each model in its ``"auto"`` template for the chat formats)."""
    from lcf.cards import pair_card
    from lcf.models.loading import load_model

    unknown = sorted(set(chosen) - set(SYSTEM_KINDS))
    needs_adapter = sorted(set(chosen) - {"receiver", "sharer", "text"})  # lora_alone too: an adapter's own LoRA
    if unknown or needs_adapter:
        raise LCFError(f"systems {unknown or needs_adapter} cannot run with --pair (no adapter): choose from receiver, "
                       f"sharer, text, or pass an adapter instead of --pair")
    card = pair_card(pair)
    sharer = load_model(card.sharer, dtype=dtype, device=device)
    receiver = load_model(card.receiver, dtype=dtype, device=device)
    systems: list[System] = []
    if "receiver" in chosen:
        systems.append(ReceiverAlone(receiver))
    if "sharer" in chosen:
        systems.append(SharerAlone(sharer))
    if "text" in chosen:
        systems += [TextRelay(sharer, receiver, message_tokens=n) for n in text_tokens]
    return systems


def build_systems(adapters: Sequence[Any], labels: Sequence[str], chosen: Sequence[str], *,
                  text_tokens: Sequence[int] = (50,), lora: Sequence[str] = ()) -> list[System]:
    """The systems to compare, all on the first adapter's pair (the others must share it).

    chosen: families from :data:`SYSTEM_KINDS`; ``lora`` needs ``lora`` run directories;
    ``text`` adds one relay per message budget in ``text_tokens``."""
    unknown = sorted(set(chosen) - set(SYSTEM_KINDS))
    if unknown:
        raise LCFError(f"unknown systems {unknown}; choose from {', '.join(SYSTEM_KINDS)}")
    if not adapters:
        raise LCFError("evaluation needs at least one adapter (it names the sharer/receiver pair)")
    if "lora" in chosen and not lora:
        raise LCFError("the 'lora' system needs --lora RUN_DIR (a run of `lcf train-lora RECIPE`)")
    first = adapters[0]
    templates = first.config.get("templates", {})
    systems: list[System] = []
    for kind in SYSTEM_KINDS:
        if kind not in chosen:
            continue
        if kind == "receiver":
            systems.append(ReceiverAlone(first))
        elif kind == "sharer":
            systems.append(SharerAlone(first))
        elif kind == "text":
            systems += [TextRelay(first.sharer, first.receiver, message_tokens=n,
                                  sharer_template=templates.get("sharer", "auto"),
                                  receiver_template=templates.get("receiver", "auto")) for n in text_tokens]
        elif kind == "lora":
            names = [Path(d).name for d in lora]
            for d, n in zip(lora, names):
                label = "lora receiver" if len(lora) == 1 else f"lora receiver ({n})"
                systems.append(LoRAReceiver(d, first.receiver, template=templates.get("receiver", "auto"),
                                            name=label))
    for adapter, label in zip(adapters, labels):
        if "lora_alone" in chosen and getattr(adapter.communicator, "receiver_adapter", None) is not None:
            systems.append(ReceiverLoRAAlone(adapter, label=label))
        for control, key in (("none", "adapter"), ("zero", "zero"), ("mismatched", "mismatched")):
            if key in chosen:
                systems.append(AdapterSystem(adapter, control, label=label))
    return systems
