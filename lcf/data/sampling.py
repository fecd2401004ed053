"""Training order: a seeded, shardable, optionally length-bucketed sampler and a resumable loader.

:class:`EpochSampler` yields this rank's examples of an epoch in an order fixed by ``(seed, epoch)``:
a permutation of the whole set (the same on every rank), cut to a multiple of the world size, every
``num_replicas``-th example from ``rank`` (as ``DistributedSampler(drop_last=True)``, which it extends,
so Lightning keeps it in distributed runs); a single process gets the order a seeded shuffling
``DataLoader`` gives (:func:`single_process_order`). With ``bucket_by_length`` the shard is cut into chunks of
``batch_size * bucket_batches`` examples, each chunk is sorted by length so that a batch holds
examples of similar length (less padding), and the order of the full batches is shuffled (a partial
last batch stays last). Every rank has the same number of examples, hence of batches.

:class:`ResumableLoader` counts the batches it has handed out in the current epoch; its
``state_dict()`` is stored in Lightning checkpoints (``fit_loop.state_dict.combined_loader``) and
``load_state_dict()`` makes the next iteration of that epoch skip those batches, so a resumed run
sees exactly the batches an uninterrupted run would have seen.

Torch only (no Lightning import).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

log = logging.getLogger(__name__)


class EpochSampler(DistributedSampler):
    """Indices of one rank's share of an epoch; deterministic per ``(seed, epoch)``. ``lengths[i]``: the
    sort key of example ``i`` (needed with ``bucket_by_length``)."""

    def __init__(self, dataset: Sequence, *, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 bucket_by_length: bool = False, lengths: Sequence[int] | None = None,
                 bucket_batches: int = 16) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        if bucket_by_length and (lengths is None or len(lengths) != len(dataset)):
            raise ValueError(f"EpochSampler: bucket_by_length needs one length per example ({len(dataset)}), got "
                             f"{None if lengths is None else len(lengths)}")
        if batch_size < 1 or bucket_batches < 1:
            raise ValueError(f"EpochSampler: batch_size and bucket_batches must be >= 1, got {batch_size}, "
                             f"{bucket_batches}")
        self.batch_size, self.bucket_by_length, self.bucket_batches = batch_size, bucket_by_length, bucket_batches
        self.lengths = list(lengths) if lengths is not None else None
        self._skip: tuple[int, int] | None = None  # (epoch, examples to skip) set by a resume

    def order(self, epoch: int) -> list[int]:
        """This rank's examples of ``epoch``, in training order."""
        if self.num_replicas == 1 and not self.bucket_by_length:
            return single_process_order(len(self.dataset), self.seed, epoch)
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(len(self.dataset), generator=g).tolist()[: self.total_size]
        shard = perm[self.rank:self.total_size:self.num_replicas]
        if not self.bucket_by_length:
            return shard
        chunk = self.batch_size * self.bucket_batches
        batches: list[list[int]] = []
        for start in range(0, len(shard), chunk):
            part = sorted(shard[start:start + chunk], key=lambda i: self.lengths[i], reverse=True)
            batches += [part[j:j + self.batch_size] for j in range(0, len(part), self.batch_size)]
        # chunks are whole batches, so only the very last batch may be partial: it stays last, so that the
        # loader's grouping of consecutive indices into batches matches these batches
        full = [b for b in batches if len(b) == self.batch_size]
        partial = [b for b in batches if len(b) < self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
        return [i for b in shuffled + partial for i in b]

    def resume(self, epoch: int, examples: int) -> None:
        """Skip the first ``examples`` of ``epoch`` the next time that epoch is iterated."""
        self._skip = (int(epoch), int(examples)) if examples > 0 else None

    def pending_skip(self) -> int:
        """Examples the next iteration will skip (0 unless resuming in the current epoch)."""
        return self._skip[1] if self._skip and self._skip[0] == self.epoch else 0

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        skip = self.pending_skip()
        self._skip = None
        return iter(order[skip:])


def single_process_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order ``DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))`` gives in epoch
    ``epoch`` (what single-process training used before this module, so such runs stay reproducible).

    That loader's generator serves, per epoch, one int64 draw (the iterator's base seed), the epoch's
    permutation, and one more permutation that ``RandomSampler`` draws (and slices to nothing) when it
    is exhausted; the stream is replayed from the seed."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epoch):
        torch.empty((), dtype=torch.int64).random_(generator=g)
        torch.randperm(n, generator=g)
        torch.randperm(n, generator=g)
    torch.empty((), dtype=torch.int64).random_(generator=g)
    return torch.randperm(n, generator=g).tolist()


class ResumableLoader(DataLoader):
    """A training DataLoader over an :class:`EpochSampler` whose position can be saved and restored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError("ResumableLoader needs an EpochSampler (sampler=...)")
        self._epoch: int | None = None
        self._batches = 0

    def __iter__(self) -> Iterator[Any]:
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        self._epoch, self._batches = sampler.epoch, sampler.pending_skip() // self.batch_size
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        epoch = sampler.epoch if self._epoch is None else self._epoch
        return {"epoch": epoch, "batches": self._batches if self._epoch is not None else 0, "seed": sampler.seed,
                "num_replicas": sampler.num_replicas, "batch_size": self.batch_size,
                "bucket_by_length": sampler.bucket_by_length, "num_examples": len(sampler.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        now = {"seed": sampler.seed, "num_replicas": sampler.num_replicas, "batch_size": self.batch_size,
               "bucket_by_length": sampler.bucket_by_length, "num_examples": len(sampler.dataset)}
        changed = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
        if changed:
            log.warning("resuming with other data settings %s (checkpoint, now): the interrupted epoch restarts "
                        "from its beginning instead of where it stopped", changed)
            return
        sampler.resume(state["epoch"], int(state["batches"]) * self.batch_size)
