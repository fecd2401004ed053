"""Lightning DataModule over :class:`lcf.data.instruct.InstructData`.

Features are built once in :meth:`InstructDataModule.setup`; batches are padded by
:func:`lcf.data.instruct.collate`. The training loader is a :class:`lcf.data.sampling.ResumableLoader`
over an :class:`lcf.data.sampling.EpochSampler` seeded by ``seed``: its position is saved in
checkpoints, so ``lcf train --resume`` continues the interrupted epoch exactly where it stopped. In
distributed runs (world size > 1) it shards the examples itself like ``DistributedSampler(drop_last=True)``:
no example is seen twice in an epoch (Lightning's default sampler would pad the last shard by repeating
examples); the at most ``world_size - 1`` examples left over by the even split are dropped, a different
few each epoch. ``bucket_by_length`` (recipe ``data.bucket_by_length: true``) groups examples of similar
receiver length into batches (less padding). Validation keeps Lightning's sampler, which may count up to
``world_size - 1`` examples twice.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader

from lcf.data.features import collate, pad_token_id
from lcf.data.instruct import InstructData
from lcf.data.sampling import EpochSampler, ResumableLoader


class InstructDataModule(lightning.LightningDataModule):
    """Train / validation loaders of instruction features for a (receiver, sharer) pair.

    ``train_features`` / ``val_features`` are available after :meth:`setup`. The training loader
    shuffles with a generator seeded by ``seed`` (default: ``data.seed``).
    """

    def __init__(
        self,
        data: InstructData,
        receiver_tokenizer: Any,
        sharer_tokenizer: Any,
        aligner: Any,
        batch_size: int,
        num_workers: int = 0,
        seed: int | None = None,
        bucket_by_length: bool | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"InstructDataModule: batch_size must be >= 1, got {batch_size}")
        self.data = data
        self.receiver_tokenizer, self.sharer_tokenizer, self.aligner = receiver_tokenizer, sharer_tokenizer, aligner
        self.batch_size, self.num_workers = batch_size, num_workers
        self.seed = data.seed if seed is None else seed
        self.bucket_by_length = bool(getattr(data, "bucket_by_length", False) if bucket_by_length is None
                                     else bucket_by_length)
        self.train_features: list[dict] = []
        self.val_features: list[dict] = []
        self._prepared = False
        self._collate = partial(
            collate, receiver_pad_id=pad_token_id(receiver_tokenizer), sharer_pad_id=pad_token_id(sharer_tokenizer),
            pad_to_multiple=int(getattr(data, "pad_to_multiple", 1)),
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the features (once, whatever the stage)."""
        if self._prepared:
            return
        self.train_features, self.val_features = self.data.prepare(
            self.receiver_tokenizer, self.sharer_tokenizer, self.aligner
        )
        self._prepared = True

    def _loader(self, features: list[dict], sampler: EpochSampler | None = None) -> DataLoader:
        # the loader's own generator: creating an iterator then draws no number from torch's global RNG,
        # which a resumed run restores from its checkpoint
        cls = DataLoader if sampler is None else ResumableLoader
        return cls(
            features, batch_size=self.batch_size, shuffle=False, sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed), collate_fn=self._collate,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def _train_sampler(self) -> EpochSampler:
        """This rank's share of the training set (all of it in a single process), in a seeded order."""
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        rank = int(getattr(trainer, "global_rank", 0) or 0) if world > 1 else 0
        if len(self.train_features) < world:
            raise ValueError(
                f"InstructDataModule: {len(self.train_features)} training examples cannot be split over {world} "
                f"processes; use more data (data.train_size / fewer data.val_size) or fewer devices"
            )
        lengths = [receiver_length(f) for f in self.train_features] if self.bucket_by_length else None
        return EpochSampler(self.train_features, batch_size=self.batch_size, seed=self.seed, num_replicas=world,
                            rank=rank, bucket_by_length=self.bucket_by_length, lengths=lengths)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (seeded, resumable); in a distributed run, this rank's disjoint shard."""
        self.setup("fit")
        return self._loader(self.train_features, sampler=self._train_sampler())

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in a fixed order; an empty list when ``val_size`` is 0."""
        self.setup("validate")
        return self._loader(self.val_features) if self.val_features else []


def receiver_length(feature: dict) -> int:
    """Receiver tokens of a training feature (prompt + response): the key of length bucketing."""
    return len(feature["receiver_prompt_ids"]) + len(feature.get("response_ids", ()))
