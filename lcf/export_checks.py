"""Checks of ``lcf export`` (and every adapter writer): finite tensors, room for the files, and write
failures told in one line."""
from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch

from lcf.guards import check_finite_tensors
from lcf.paths import OutputPathError, check_output_path

#: room kept for adapter_config.json and README.md beside the tensors
TEXT_ALLOWANCE = 1 << 20


def check_checkpoint_finite(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """Refuse a checkpoint whose weights hold NaN or infinite values (a diverged run); return it."""
    check_finite_tensors(ckpt.get("state_dict") or {}, f"checkpoint {path}",
                         "it was saved after training diverged; export an earlier checkpoint of its ckpt/ folder "
                         "(--which last / best, or a .ckpt file) or train again with a lower trainer.lr")
    return ckpt


def check_before_writing(out_dir: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse non-finite tensors, and an output whose disk or file-size limit cannot hold them."""
    check_finite_tensors(tensors, f"adapter for {out_dir}",
                         "the translator diverged; export an earlier checkpoint or train again with a lower "
                         "trainer.lr")
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    check_output_path(out_dir, "export target", size_bytes=size + TEXT_ALLOWANCE, sibling=True)


def save_failure(out_dir: str | Path, exc: BaseException) -> OutputPathError:
    """The one-line error to raise when writing the tensors failed (an OSError, or safetensors' own error
    such as 'File too large')."""
    return OutputPathError(getattr(exc, "errno", None) or errno.EIO,
                           f"writing the adapter {out_dir} failed ({type(exc).__name__}: {exc}); the disk may be "
                           f"full or a file-size limit (`ulimit -f`) reached: free space, raise the limit or "
                           f"export elsewhere. Nothing was written; an earlier adapter there is untouched")
