"""Build Lightning's strategy from ``trainer.strategy`` (``auto``, ``ddp``, ``deepspeed`` ...)."""
from __future__ import annotations

from typing import Any

from lcf.errors import LCFError, RecipeError, suggest

KNOWN = ("auto", "ddp", "ddp_spawn", "deepspeed", "single_device")


def _split(spec: str | dict) -> tuple[str, dict]:
    if isinstance(spec, dict):
        options = dict(spec)
        return options.pop("type", None) or options.pop("name", None), options
    return spec, {}


def strategy_name(spec: str | dict) -> str:
    """The strategy's name; unknown names raise with the close matches."""
    name, _ = _split(spec)
    if name not in KNOWN:
        raise RecipeError(f"trainer.strategy: unknown strategy {name!r}.{suggest(str(name), KNOWN)} Known: {', '.join(KNOWN)}.")
    return name


def build_strategy(settings) -> Any:
    name = strategy_name(settings.strategy)
    _, spec = _split(settings.strategy)
    if name == "deepspeed":
        return _deepspeed(spec)
    if name in ("ddp", "ddp_spawn") and spec:
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(start_method="spawn" if name == "ddp_spawn" else "popen", **spec)
    if spec:
        raise RecipeError(f"trainer.strategy: {name!r} takes no options, got {sorted(spec)}")
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
        raise LCFError("trainer.strategy=deepspeed needs DeepSpeed: `pip install 'lcf[deepspeed]'`") from exc
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(**options)
