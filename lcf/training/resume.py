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


def _process_group() -> Any:
    """torch.distributed when this process is one of several in an initialised job, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


class RNGState(L.Callback):
    """Saves the RNG states in each checkpoint and restores them on ``--resume``. In a distributed job
    every rank's own states are gathered into the checkpoint (under ``ranks``) and each rank gets its
    own back; rank 0's stay at the top level for readers of older checkpoints."""

    def state_dict(self) -> dict[str, Any]:
        state = self.local_state()
        dist = _process_group()
        if dist is not None:  # every rank writes the checkpoint's state (rank 0 alone saves the file)
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, state)
            state = dict(ranks[0]) | {"ranks": ranks}
        return state

    def local_state(self) -> dict[str, Any]:
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
        ranks, dist = state_dict.get("ranks"), _process_group()
        if ranks and dist is not None and len(ranks) == dist.get_world_size():
            state_dict = ranks[dist.get_rank()]  # this rank's own states
        elif ranks and dist is not None:
            import logging

            logging.getLogger(__name__).warning(
                "--resume: the checkpoint holds RNG states of %d ranks but this job has %d; every rank restores "
                "rank 0's states", len(ranks), dist.get_world_size())
        self.restore(state_dict)

    def restore(self, state_dict: dict[str, Any]) -> None:
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
