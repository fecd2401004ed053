"""The recipe's ``receiver_adapter:``: a LoRA on the receiver trained with (or before) the translator.

    receiver_adapter: {type: lora, rank: 16, alpha: 32}        # joint: LoRA and translator from step 0
    receiver_adapter: {type: lora, rank: 16, lr_scale: 0.0}    # staged: the LoRA of an earlier run, frozen,
    init: {receiver_adapter: checkpoints/NAME-lora}            #   and the translator trained on top of it

The LoRA carries the adaptation to the data, so a receiver-blind translator (``gated_fusion``, ``lcf_lowrank``
with ``read_receiver: false``) is left with what the sharer knows. ``init.receiver_adapter`` names an
``lcf train-lora`` run, a PEFT LoRA folder or an exported adapter composed with one; its rank, alpha and layers
must be the section's. ``lr_scale`` multiplies ``trainer.lr`` for the LoRA (0 freezes it). Checked by
``lcf validate`` (:func:`check_recipe`); built by ``lcf train`` (:func:`build_receiver_adapter`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lcf.errors import RecipeError
from lcf.registry import receiver_adapters
from lcf.runtime.receiver_lora import ReceiverLoRA, find_peft_folder, lora_settings

INIT_KEY = "receiver_adapter"


def check_fused_init(data: Mapping[str, Any], path: str = "init") -> None:
    """``init:`` of a fused translator: ``{receiver_adapter: RUN_OR_ADAPTER}`` and nothing else."""
    spec = data.get("init")
    if not isinstance(spec, Mapping) or set(spec) != {INIT_KEY}:
        keys = sorted(spec) if isinstance(spec, Mapping) else spec
        raise RecipeError(f"{path}: a fused translator ({data['translator']['type']}) takes only "
                          f"`init: {{{INIT_KEY}: RUN_OR_ADAPTER}}` (the receiver LoRA trained first), got {keys!r}; "
                          f"`type: ridge` and `from:` belong to translator token_map")
    if not isinstance(spec[INIT_KEY], str) or not spec[INIT_KEY]:
        raise RecipeError(f"{path}.{INIT_KEY}: one path (an `lcf train-lora` run, a PEFT LoRA folder or an adapter "
                          f"composed with a receiver LoRA), got {spec[INIT_KEY]!r}")
    if not data.get("receiver_adapter"):
        raise RecipeError(f"{path}.{INIT_KEY}: the recipe has no `receiver_adapter:` section to start from it; add "
                          f"`receiver_adapter: {{type: lora, rank: R, lr_scale: 0.0}}` with the LoRA's rank")


def check_recipe(data: Mapping[str, Any]) -> None:
    """What a ``receiver_adapter`` section needs of the rest of the recipe (called by ``lcf validate``)."""
    spec = data.get("receiver_adapter")
    if not isinstance(spec, Mapping):
        return  # absent, or the registry's check reports the section's shape
    from lcf.runtime.kinds import PER_TOKEN, adapter_kind

    tr = data.get("translator") or {}
    if isinstance(tr, Mapping) and isinstance(tr.get("type"), str) and adapter_kind(tr["type"]) == PER_TOKEN:
        raise RecipeError(f"receiver_adapter: the per-token translator {tr['type']} trains without the fused receiver "
                          f"it would adapt; remove the section (a receiver LoRA composes with fused translators)")
    if data.get("compressor"):
        raise RecipeError("receiver_adapter: not supported with a compressor (cross-context): `lcf eval-xc` would "
                          "score its receiver-alone and text systems with the LoRA on; remove one of the two")
    if spec.get("lr_scale") == 0 and not (data.get("init") or {}).get(INIT_KEY):
        raise RecipeError(f"receiver_adapter.lr_scale: 0 freezes the LoRA, which then stays at its initialisation "
                          f"(B = 0: no change); name the LoRA trained first (`init: {{{INIT_KEY}: RUN}}`) or set "
                          f"lr_scale > 0")


def build_receiver_adapter(recipe: Mapping[str, Any], receiver: nn.Module) -> ReceiverLoRA | None:
    """The recipe's receiver LoRA hooked onto ``receiver`` (staged: its weights from ``init.receiver_adapter``,
    frozen when ``lr_scale`` is 0), or None without the section."""
    spec = recipe.get("receiver_adapter")
    if not spec:
        return None
    lora = receiver_adapters.build(spec, "receiver_adapter", model=receiver)
    source = (recipe.get("init") or {}).get(INIT_KEY)
    if source:
        first = ReceiverLoRA.from_peft(find_peft_folder(source), receiver)
        if (first.rank, first.alpha, first.paths()) != (lora.rank, lora.alpha, lora.paths()):
            raise RecipeError(
                f"init.{INIT_KEY}: {source} holds a LoRA of rank {first.rank}, alpha {first.alpha:g} on "
                f"{first.target_modules}, but receiver_adapter asks for rank {lora.rank}, alpha {lora.alpha:g} on "
                f"{lora.target_modules}; set receiver_adapter.rank={first.rank} receiver_adapter.alpha={first.alpha:g} "
                f"receiver_adapter.target_modules=[{','.join(first.target_modules)}]")
        lora.load_state_dict(first.state_dict(), strict=True)
    if lora.lr_scale == 0:
        lora.requires_grad_(False)
    return lora.attach(receiver)


def control_lora_settings(recipe: Mapping[str, Any], rank: int | None, matched: int) -> tuple[int, float, list[str]]:
    """``lcf train-lora``'s LoRA: the recipe's ``receiver_adapter`` shape when it has one (so the LoRA trained
    alone is the composed one's first stage), else rank ``matched`` (the translator's parameter count), alpha 2r.
    ``rank`` (``--rank``) overrides either."""
    spec = dict(recipe.get("receiver_adapter") or {})
    if not spec:
        r = rank or matched
        return r, float(2 * r), list(lora_settings({})[2])
    if rank:
        spec["rank"] = rank
    return lora_settings(spec)


def check_init_source(recipe: Mapping[str, Any]) -> None:
    """Refuse, before any model loads, an ``init.receiver_adapter`` path that holds no PEFT LoRA."""
    source = (recipe.get("init") or {}).get(INIT_KEY) if recipe.get("receiver_adapter") else None
    if source:
        find_peft_folder(source)
