"""A LoRA on the receiver (``receiver_adapter: {type: lora, ...}``), applied without PEFT.

For each targeted ``nn.Linear`` ``W`` of the receiver (matched as PEFT matches a ``target_modules`` list: the
module's path is a name, or ends with ``.name``)::

    y = W x + (alpha / r) * B (A x)          A: (r, in), B: (out, r); B starts at zero, so a fresh LoRA changes nothing

The update is added by a forward hook on ``W``: the receiver keeps its weights, module tree and fingerprint, and
the LoRA can be switched off for a while (:meth:`ReceiverLoRA.disabled`, :func:`without_receiver_lora`: the
receiver alone). A translator composed with it then carries only what the sharer knows, the LoRA the adaptation.

On disk the LoRA is a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``, tensors named
``base_model.model.<module path>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r)), so
``PeftModel.from_pretrained(receiver, folder)`` loads it on its own; :meth:`ReceiverLoRA.from_peft` reads such a
folder (one written by ``lcf export`` or ``lcf train-lora``) and :meth:`ReceiverLoRA.save_peft` writes one.
"""
from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lcf.errors import LCFError, RecipeError
from lcf.registry import receiver_adapters
from lcf.runtime.format import CONFIG_NAME, RECEIVER_LORA_FOLDER, AdapterError

#: the Linear layers of a Llama-like decoder block (attention and MLP); the default ``target_modules``
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the causal LM: the tensor names' common head
#: PEFT options this reader does not implement, each with the value that means "not used"
UNSUPPORTED = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
               "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None, "layer_replication": None}


def lora_settings(spec: dict[str, Any]) -> tuple[int, float, list[str]]:
    """``(rank, alpha, target_modules)`` of a ``receiver_adapter`` spec, defaults filled in (shared with
    ``lcf train-lora``, so a LoRA trained alone has the shape of the composed one)."""
    rank = int(spec.get("rank") or 16)
    alpha = spec.get("alpha")
    return rank, float(alpha if alpha is not None else 2 * rank), list(spec.get("target_modules") or TARGETS)


def target_linears(model: nn.Module, names: list[str], where: str = "receiver_adapter.target_modules") -> dict:
    """Module path -> ``nn.Linear`` of every module of ``model`` that ``names`` target (PEFT's list matching)."""
    found = {}
    for path, module in model.named_modules():
        if path and any(path == n or path.endswith("." + n) for n in names):
            if not isinstance(module, nn.Linear):
                raise RecipeError(f"{where}: {path} is a {type(module).__name__}, not a torch.nn.Linear; a receiver "
                                  f"LoRA adapts Linear layers only: name those (e.g. {', '.join(TARGETS[:4])})")
            found[path] = module
    if not found:
        linear = sorted({p.rsplit(".", 1)[-1] for p, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise RecipeError(f"{where}: no module of the receiver ({type(model).__name__}) is named {names}; its Linear "
                          f"layers are named {', '.join(linear[:12]) or '(none)'}")
    return found


def _key(path: str) -> str:
    return path.replace(".", "/")  # ModuleDict keys cannot hold dots


class LoRAPair(nn.Module):
    """``B A`` of one Linear layer: ``lora_A`` (r, in), Kaiming-uniform as ``nn.Linear``; ``lora_B`` (out, r), zero."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(x))


class LoRAHook:
    """Forward hook of one target Linear: adds ``scale * B(A x)`` while its LoRA is enabled."""

    def __init__(self, owner: "ReceiverLoRA", pair: LoRAPair):
        self.owner, self.pair = owner, pair

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        if not self.owner.enabled:
            return output
        x = args[0] if args else kwargs["input"]
        delta = self.pair(x.to(self.pair.lora_A.weight.dtype)) * self.owner.scale
        return output + delta.to(output.dtype)


@receiver_adapters.register("lora")
class ReceiverLoRA(nn.Module):
    """A LoRA on the receiver's Linear layers, composed with a translator (or trained alone).

    Args:
        model: the receiver (supplied by the code, not the recipe); only its layer shapes are read here.
        rank: r, the LoRA's inner width.
        alpha: the update is scaled by alpha / r (default 2 r, as ``lcf train-lora``).
        target_modules: names of the Linear layers to adapt (default :data:`TARGETS`).
        lr_scale: training only: the LoRA learns at ``lr_scale * trainer.lr``; 0 freezes it (a LoRA trained
            first, named by ``init: {receiver_adapter: ...}``).
    """

    def __init__(self, model: nn.Module, rank: int = 16, alpha: float | None = None,
                 target_modules: list[str] | None = None, lr_scale: float = 1.0):
        super().__init__()
        self.check_spec({"rank": rank, "alpha": alpha, "target_modules": target_modules, "lr_scale": lr_scale},
                        "receiver_adapter")
        self.rank, self.alpha, self.target_modules = lora_settings(
            {"rank": rank, "alpha": alpha, "target_modules": target_modules})
        self.lr_scale = float(lr_scale)
        self.scale = self.alpha / self.rank
        self.enabled = True
        self.layers = nn.ModuleDict({_key(p): LoRAPair(m.in_features, m.out_features, self.rank)
                                     for p, m in target_linears(model, self.target_modules).items()})
        self._handles: list = []

    @classmethod
    def check_spec(cls, spec: dict[str, Any], path: str) -> None:
        """Values ``lcf validate`` checks beyond the types: rank >= 1, alpha > 0, lr_scale >= 0, names given."""
        rank, alpha, lr_scale, names = (spec.get(k) for k in ("rank", "alpha", "lr_scale", "target_modules"))
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise RecipeError(f"{path}.rank: the LoRA's rank must be an integer >= 1, got {rank!r} (e.g. rank: 16)")
        if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise RecipeError(f"{path}.alpha: the scale numerator must be a number > 0, got {alpha!r} "
                              f"(default 2 * rank)")
        if lr_scale is not None and not (isinstance(lr_scale, (int, float)) and math.isfinite(lr_scale)
                                         and lr_scale >= 0):
            raise RecipeError(f"{path}.lr_scale: a factor of trainer.lr >= 0 (0 freezes the LoRA), got {lr_scale!r}")
        if names is not None and (not isinstance(names, (list, tuple)) or not names
                                  or not all(isinstance(n, str) and n for n in names)):
            raise RecipeError(f"{path}.target_modules: a non-empty list of Linear layer names, got {names!r} "
                              f"(default {list(TARGETS)})")

    @property
    def init_args(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": self.target_modules,
                "lr_scale": self.lr_scale}

    def paths(self) -> list[str]:
        """The adapted modules' paths in the receiver (``model.layers.0.self_attn.q_proj``, ...)."""
        return [k.replace("/", ".") for k in self.layers]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    # -- on the receiver -----------------------------------------------------------------------
    def attach(self, model: nn.Module) -> "ReceiverLoRA":
        """Hook every target Linear of ``model`` (the receiver these layers were sized for); returns self."""
        if attached(model) is not None:
            raise LCFError("this receiver already carries a receiver LoRA (another composed adapter's); load each "
                           "composed adapter with a receiver of its own (load_adapter(..., receiver=None))")
        found = target_linears(model, self.target_modules)
        wrong = [f"{p}: ({m.out_features}, {m.in_features})" for p, m in found.items()
                 if _key(p) not in self.layers or self.layers[_key(p)].lora_A.in_features != m.in_features
                 or self.layers[_key(p)].lora_B.out_features != m.out_features]
        if wrong or len(found) != len(self.layers):
            raise LCFError(f"this receiver LoRA was sized for another model: {len(self.layers)} layers against "
                           f"{len(found)} here, mismatches {wrong[:3]}; attach it to the receiver it was built for")
        for p, m in found.items():
            self._handles.append(m.register_forward_hook(LoRAHook(self, self.layers[_key(p)]), with_kwargs=True))
        return self

    def detach(self) -> None:
        """Remove the hooks: the receiver is as it was loaded."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Within the block the receiver runs without this LoRA."""
        before, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = before

    # -- PEFT's format -------------------------------------------------------------------------
    def peft_state(self) -> dict[str, torch.Tensor]:
        """The tensors under PEFT's names (CPU, contiguous)."""
        out = {}
        for key, pair in self.layers.items():
            for part in ("lora_A", "lora_B"):
                weight = getattr(pair, part).weight
                out[f"{PEFT_PREFIX}{key.replace('/', '.')}.{part}.weight"] = weight.detach().to("cpu").contiguous()
        return out

    def load_peft_state(self, state: dict[str, torch.Tensor], source: str) -> "ReceiverLoRA":
        """Copy ``state`` (PEFT's names) in; refuses missing, unexpected, mis-shaped or non-finite tensors."""
        expected = self.peft_state()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        wrong = [f"{k}: file {tuple(state[k].shape)} vs receiver {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
        bad = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
        if missing or unexpected or wrong or bad:
            raise AdapterError(f"{source}: the LoRA's tensors do not fit this receiver: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}, shape mismatches {wrong[:3]}, non-finite {bad[:3]}; "
                               f"use the LoRA trained for this receiver (or re-export it)")
        with torch.no_grad():
            for key, pair in self.layers.items():
                for part in ("lora_A", "lora_B"):
                    getattr(pair, part).weight.copy_(state[f"{PEFT_PREFIX}{key.replace('/', '.')}.{part}.weight"])
        return self

    @classmethod
    def from_peft(cls, folder: str | Path, model: nn.Module, *, lr_scale: float = 1.0) -> "ReceiverLoRA":
        """The LoRA of a PEFT folder, sized for ``model`` (not attached). Needs neither PEFT nor the training stack."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg = _read_peft_config(folder)
        try:
            state = load_file(str(folder / PEFT_WEIGHTS))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise AdapterError(f"{folder / PEFT_WEIGHTS} is missing, truncated or corrupted ({type(exc).__name__}: "
                               f"{exc}); re-export the adapter (or train the LoRA again)") from exc
        paths = sorted({k[len(PEFT_PREFIX):].rsplit(".", 2)[0] for k in state if k.startswith(PEFT_PREFIX)})
        if not paths:
            raise AdapterError(f"{folder / PEFT_WEIGHTS} holds no tensor named {PEFT_PREFIX}<module>.lora_A.weight: "
                               f"not a LoRA saved by PEFT's save_pretrained or lcf export")
        names = sorted({p.rsplit(".", 1)[-1] for p in paths})
        try:
            lora = cls(model, rank=cfg["r"], alpha=cfg["lora_alpha"], target_modules=names, lr_scale=lr_scale)
        except RecipeError as exc:
            raise AdapterError(f"{folder}: {exc}") from exc
        if sorted(lora.paths()) != paths:
            extra = sorted(set(lora.paths()) - set(paths))
            raise AdapterError(f"{folder}: the LoRA adapts {len(paths)} modules, but its names {names} match "
                               f"{len(lora.paths())} of this receiver ({extra[:2]} have no tensors): a LoRA on part of "
                               f"the layers (layers_to_transform) is not supported; train it on every matching layer")
        return lora.load_peft_state(state, str(folder / PEFT_WEIGHTS))

    def save_peft(self, folder: str | Path, base_model: str | None = None) -> Path:
        """Write this LoRA as a PEFT folder (``PeftModel.from_pretrained(receiver, folder)`` loads it)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.peft_state(), str(folder / PEFT_WEIGHTS), metadata={"format": "pt"})
        config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model,
                  "r": self.rank, "lora_alpha": self.alpha, "lora_dropout": 0.0, "target_modules": self.target_modules,
                  "inference_mode": True, "init_lora_weights": True, "layers_to_transform": None,
                  "layers_pattern": None} | UNSUPPORTED
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        return folder

    def config_record(self) -> dict[str, Any]:
        """What ``adapter_config.json`` says of it (key ``receiver_adapter``)."""
        return {"type": "lora", "args": self.init_args, "folder": RECEIVER_LORA_FOLDER,
                "num_parameters": self.num_parameters(), "size_bytes": self.size_bytes()}


def _read_peft_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path} cannot be read as a PEFT LoRA config ({type(exc).__name__}: {exc}); expected "
                           f"the adapter_config.json of PEFT's save_pretrained (re-export the adapter)") from exc
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        got = cfg.get("peft_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise AdapterError(f"{path}: peft_type is {got!r}, expected 'LORA' (a PEFT LoRA folder)")
    used = [f"{k}={cfg[k]!r}" for k, off in UNSUPPORTED.items() if cfg.get(k) and cfg.get(k) != off]
    if used:
        raise AdapterError(f"{path}: {', '.join(used)} is not supported by lcf's LoRA reader (plain LoRA only: "
                           f"{', '.join(f'{k}={v!r}' for k, v in UNSUPPORTED.items())}); train the LoRA without it")
    for key in ("r", "lora_alpha"):
        if isinstance(cfg.get(key), bool) or not isinstance(cfg.get(key), (int, float)):
            raise AdapterError(f"{path}: {key} must be a number, got {cfg.get(key)!r}; re-export the adapter")
    return cfg


def find_peft_folder(path: str | Path) -> Path:
    """The PEFT LoRA folder a path names: the folder itself, an ``lcf train-lora`` run (its ``lora/``) or an lcf
    adapter folder composed with a receiver LoRA (its ``receiver_lora/``)."""
    p = Path(path)
    for candidate in (p, p / "lora", p / RECEIVER_LORA_FOLDER):
        if (candidate / PEFT_WEIGHTS).is_file() and (candidate / CONFIG_NAME).is_file():
            return candidate
    raise AdapterError(f"{p} holds no PEFT LoRA ({CONFIG_NAME} + {PEFT_WEIGHTS} in it, in lora/ or in "
                       f"{RECEIVER_LORA_FOLDER}/); give an `lcf train-lora` run folder, a PEFT folder or an exported "
                       f"adapter composed with a receiver LoRA")


def attached(model: nn.Module) -> ReceiverLoRA | None:
    """The receiver LoRA hooked onto ``model``, or None."""
    for module in model.modules():
        for hook in module._forward_hooks.values():
            if isinstance(hook, LoRAHook):
                return hook.owner
    return None


def without_receiver_lora(model: nn.Module | None) -> contextlib.AbstractContextManager:
    """A context in which ``model`` runs without the receiver LoRA hooked onto it (if any): the receiver alone."""
    lora = attached(model) if model is not None else None
    return lora.disabled() if lora is not None else contextlib.nullcontext()


def strip_receiver_lora(model: nn.Module) -> nn.Module:
    """Remove every receiver-LoRA hook from ``model`` (e.g. from a deep copy, whose hooks were copied too)."""
    for module in model.modules():
        for hook_id in [i for i, h in module._forward_hooks.items() if isinstance(h, LoRAHook)]:
            del module._forward_hooks[hook_id]
            module._forward_hooks_with_kwargs.pop(hook_id, None)
    return model


def load_receiver_lora(folder: Path, cfg: dict[str, Any], model: nn.Module) -> ReceiverLoRA | None:
    """The receiver LoRA an adapter's config names (key ``receiver_adapter``), attached to ``model``; None without."""
    spec = cfg.get("receiver_adapter")
    if not spec:
        return None
    sub = spec.get("folder") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or spec.get("type") != "lora" or not isinstance(sub, str) or Path(sub).name != sub:
        raise AdapterError(f"{folder / CONFIG_NAME}: receiver_adapter must be {{type: lora, folder: "
                           f"{RECEIVER_LORA_FOLDER}, ...}}, got {spec!r}; re-export the adapter with `lcf export`")
    if not (folder / sub).is_dir():
        raise AdapterError(f"{folder / sub} is missing: the adapter is composed with a receiver LoRA kept there (a "
                           f"PEFT folder); copy the whole adapter folder, or re-export it")
    return ReceiverLoRA.from_peft(folder / sub, model).attach(model)
