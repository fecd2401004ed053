"""``trainer.strategy``: check it at recipe-validation time and build Lightning's strategy from it.

A recipe names a strategy, or a mapping with ``type`` and the strategy's options::

    trainer:
      strategy: ddp                                   # or auto, ddp_spawn, single_device
      strategy: {type: deepspeed, stage: 3, offload_optimizer: true, reduce_bucket_size: 200000000}
      strategy: {type: ddp, find_unused_parameters: false, timeout: 600}

Options are checked against the signature of Lightning's ``DeepSpeedStrategy`` / ``DDPStrategy``
(plus torch's ``DistributedDataParallel`` keywords for ddp) when the recipe is validated: no model is
loaded and DeepSpeed need not be installed. ``timeout`` is given in seconds.
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import types
import typing
from collections.abc import Iterable, Iterator
from typing import Any

from lcf.errors import LCFError, RecipeError, suggest

KNOWN = ("auto", "ddp", "ddp_spawn", "deepspeed", "single_device")
ZERO_STAGES = (2, 3)
KEY = "trainer.strategy"
# constructor arguments that take Python objects or are set by lcf / Lightning, never by a recipe
CODE_SUPPLIED = frozenset({
    "accelerator", "parallel_devices", "cluster_environment", "checkpoint_io", "precision_plugin",
    "ddp_comm_state", "ddp_comm_hook", "ddp_comm_wrapper", "start_method", "module", "device_ids",
    "output_device", "process_group", "device_mesh", "mixed_precision", "param_to_hook_all_reduce",
    "delay_all_reduce_named_params", "check_reduction",
})
INSTALL_DEEPSPEED = "pip install 'lcf[deepspeed]'"


def _split(spec: str | dict) -> tuple[Any, dict]:
    if isinstance(spec, dict):
        options = dict(spec)
        if "type" not in options and "name" not in options:
            raise RecipeError(
                f"{KEY}: a mapping needs `type:` naming the strategy, got keys {sorted(options)}; "
                f"e.g. `strategy: {{type: deepspeed, stage: 2}}`. Known: {', '.join(KNOWN)}."
            )
        return options.pop("type", None) or options.pop("name", None), options
    return spec, {}


def strategy_name(spec: str | dict) -> str:
    """The strategy's name; unknown names raise with the close matches."""
    name, _ = _split(spec)
    if name not in KNOWN:
        raise RecipeError(f"{KEY}: unknown strategy {name!r}.{suggest(str(name), KNOWN)} Known: {', '.join(KNOWN)}.")
    return name


def _option_hints(name: str) -> dict[str, Any]:
    """Option name -> annotation, read from the Lightning (and torch DDP) signatures."""
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    targets = [DeepSpeedStrategy.__init__] if name == "deepspeed" else [DDPStrategy.__init__]
    if name in ("ddp", "ddp_spawn"):  # DDPStrategy passes its **kwargs on to DistributedDataParallel
        from torch.nn.parallel import DistributedDataParallel

        targets.append(DistributedDataParallel.__init__)
    hints: dict[str, Any] = {}
    for fn in targets:
        for p in inspect.signature(fn).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in CODE_SUPPLIED:
                continue
            hints.setdefault(p.name, p.annotation)
    if "timeout" in hints:
        hints["timeout"] = float  # seconds in a recipe; a timedelta for Lightning
    return hints


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted for ``hint`` (integral floats such as 2.0e+8 become ints), or a RecipeError."""
    from lcf.registry import type_matches, type_name

    if isinstance(hint, str) or isinstance(hint, typing.ForwardRef):
        return value  # an annotation we cannot evaluate: let the constructor judge
    if type_matches(value, hint):
        if hint is float and key.endswith("timeout"):
            return datetime.timedelta(seconds=float(value))
        return value
    wants_int = hint is int or (typing.get_origin(hint) in (typing.Union, types.UnionType) and int in typing.get_args(hint))
    if wants_int and isinstance(value, float) and value.is_integer():
        return int(value)
    expected = "a number of seconds" if key.endswith("timeout") else type_name(hint)
    raise RecipeError(f"{key}: expected {expected}, got {type(value).__name__} {value!r}.")


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate the options of strategy ``name``; return them converted for the constructor."""
    if not options:
        return {}
    if name in ("auto", "single_device"):
        raise RecipeError(
            f"{KEY}: {name!r} takes no options, got {sorted(options)}; use `strategy: {name}`, or pick "
            f"`ddp` / `deepspeed` to pass options."
        )
    hints = _option_hints(name)
    out = {}
    for key, value in options.items():
        if key not in hints:
            raise RecipeError(
                f"{KEY}.{key}: unknown option of the {name} strategy.{suggest(key, hints)} "
                f"Accepted: {', '.join(sorted(hints))}."
            )
        out[key] = _coerce(f"{KEY}.{key}", value, hints[key])
    if name == "deepspeed" and "stage" in out and out["stage"] not in ZERO_STAGES:
        raise RecipeError(
            f"{KEY}.stage: ZeRO stage {out['stage']!r} is not supported; use 2 (shards optimizer states and "
            f"gradients) or 3 (also shards the translator's parameters). See docs/distributed.md."
        )
    return out


def check_strategy(spec: str | dict, accelerator: str = "auto") -> str:
    """Recipe-time check of ``trainer.strategy`` (name, options) against ``trainer.accelerator``."""
    name = strategy_name(spec)
    check_options(name, _split(spec)[1])
    if name == "deepspeed" and accelerator == "cpu":
        raise RecipeError(
            f"{KEY}: deepspeed runs on CUDA GPUs but trainer.accelerator is 'cpu'. Set `trainer.accelerator: gpu`, "
            f"or keep the CPU and use `trainer.strategy: ddp` (gloo) or `auto`."
        )
    return name


def build_strategy(settings) -> Any:
    """Lightning's strategy (an object, or a name Lightning resolves) for ``settings.strategy``."""
    name = strategy_name(settings.strategy)
    options = check_options(name, _split(settings.strategy)[1])
    if name == "deepspeed":
        return _deepspeed(options)
    if name in ("ddp", "ddp_spawn") and options:
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(start_method="spawn" if name == "ddp_spawn" else "popen", **options)
    return name


def _deepspeed(options: dict) -> Any:
    import torch

    if not torch.cuda.is_available():
        raise LCFError(
            "trainer.strategy=deepspeed needs CUDA GPUs, and none is available here. Use "
            "`trainer.strategy=ddp` (CPU/gloo or GPUs) or `trainer.strategy=auto` instead."
        )
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise LCFError(
            f"trainer.strategy=deepspeed needs DeepSpeed, which is not installed: `{INSTALL_DEEPSPEED}` "
            f"(or `pip install deepspeed`), or use `trainer.strategy=ddp`."
        ) from exc
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(**options)


# -- helpers the LightningModule uses under DeepSpeed ----------------------------------------------
def _zero_config(strategy: Any) -> dict:
    if type(strategy).__name__ != "DeepSpeedStrategy":
        return {}
    return dict((getattr(strategy, "config", None) or {}).get("zero_optimization") or {})


def zero_stage(strategy: Any) -> int | None:
    """The ZeRO stage of a Lightning DeepSpeed strategy; None for any other strategy."""
    cfg = _zero_config(strategy)
    return int(cfg.get("stage", 0)) if cfg else None


def offloads_optimizer(strategy: Any) -> bool:
    """Whether DeepSpeed keeps the optimizer states in CPU memory (needs DeepSpeed's CPU Adam)."""
    return bool(_zero_config(strategy).get("offload_optimizer"))


def register_gate_parameters(module: Any, strategy: Any) -> None:
    """Under ZeRO-3, tell DeepSpeed that each translator gate module uses the logits of its
    ``ParameterDict`` child, which is indexed, never called (ZeRO-3 gathers a module's own parameters
    when the module runs, and these would stay partitioned). The gates run once per receiver layer,
    so they must not be a ZeRO-3 "leaf" module: a leaf reduces all its gradients after every call."""
    if zero_stage(strategy) != 3:
        return
    from deepspeed.runtime.zero import register_external_parameter

    from lcf.translators.base import LayerGates

    for gates in module.modules():
        if isinstance(gates, LayerGates):
            for param in gates.parameters():
                register_external_parameter(gates, param)


@contextlib.contextmanager
def gathered(params: Iterable[Any]) -> Iterator[None]:
    """Full values of ZeRO-3-partitioned ``params`` inside the block (read-only); a no-op otherwise.
    Under ZeRO-3 it is a collective: every rank must enter it."""
    params = list(params)
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield
