"""Exact resumption: the random number generators' states travel in every checkpoint.

Lightning restores the weights, optimizer, scheduler and loop counters, and (with
:class:`lcf.data.sampling.ResumableLoader`) the position in the training data; this callback adds the
RNG states (torch CPU and CUDA, Python, NumPy) as they were when the checkpoint was written, so the
Gumbel noise of the gates, dropout and any other draw continue as in an uninterrupted run.
"""
from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch


class RNGState(L.Callback):
    """Saves the RNG states in each checkpoint and restores them on ``--resume``."""

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        try:
            import numpy as np

            kind, keys, pos, has_gauss, gauss = np.random.get_state()
            # plain types and tensors only: checkpoints are read with torch.load(weights_only=True)
            state["numpy"] = (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                              float(gauss))
        except ImportError:
            pass
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        if "python" in state_dict:
            random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        if "numpy" in state_dict:
            import numpy as np

            kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
