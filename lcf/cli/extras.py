"""Optional dependencies: which ``pip install 'lcf[EXTRA]'`` a command needs when a package is missing.

``pip install lcf`` installs the runtime only (torch, transformers, safetensors, pyyaml, numpy); training,
evaluation, GGUF conversion and the rest come with extras. :data:`EXTRAS` mirrors
``[project.optional-dependencies]`` of pyproject.toml (a test keeps the two equal), by import name.
"""
from __future__ import annotations

#: extra -> the packages it installs, by the name they are imported under
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("lightning", "peft", "torchmetrics", "omegaconf", "rich", "accelerate"),
    "eval": ("omegaconf", "rich", "torchmetrics", "matplotlib"),
    "gguf": ("gguf",),
    "deepspeed": ("deepspeed",),
    "lmeval": ("lm_eval",),
}
#: command -> the extra it needs first (a package in several extras is named by the command's own)
COMMAND_EXTRAS: dict[str, str] = {"eval": "eval", "eval-xc": "eval", "models": "gguf"}


def extra_for(package: str, command: str | None = None) -> str | None:
    """The extra that installs ``package`` (a top-level import name) for ``command``, or None if none does."""
    preferred = COMMAND_EXTRAS.get(command or "")
    if preferred is not None and package in EXTRAS[preferred]:
        return preferred
    return next((extra for extra, packages in EXTRAS.items() if package in packages), None)


def missing_extra_line(exc: ImportError, command: str | None) -> str | None:
    """One line telling what to install when ``exc`` is a missing optional package, else None."""
    package = (exc.name or "").partition(".")[0]
    extra = extra_for(package, command)
    if extra is None:
        return None
    what = f"`lcf {command}`" if command else "this command"
    return (f"{what} needs the package {package!r}, which is not installed; install it with: "
            f"pip install 'lcf[{extra}]'")
