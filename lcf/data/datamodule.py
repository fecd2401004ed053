"""Lightning DataModule over :class:`lcf.data.instruct.InstructData`.

Features are built once in :meth:`InstructDataModule.setup`; batches are padded by
:func:`lcf.data.instruct.collate`. In distributed runs (world size > 1) the training loader shards
the examples itself with a ``DistributedSampler(drop_last=True)`` seeded by ``seed``: no example is
seen twice in an epoch (Lightning's default sampler would pad the last shard by repeating examples);
the at most ``world_size - 1`` examples left over by the even split are dropped, a different few each
epoch. Validation keeps Lightning's sampler, which may count up to ``world_size - 1`` examples twice.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lcf.data.features import collate, pad_token_id
from lcf.data.instruct import InstructData


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
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"InstructDataModule: batch_size must be >= 1, got {batch_size}")
        self.data = data
        self.receiver_tokenizer, self.sharer_tokenizer, self.aligner = receiver_tokenizer, sharer_tokenizer, aligner
        self.batch_size, self.num_workers = batch_size, num_workers
        self.seed = data.seed if seed is None else seed
        self.train_features: list[dict] = []
        self.val_features: list[dict] = []
        self._prepared = False
        self._collate = partial(
            collate, receiver_pad_id=pad_token_id(receiver_tokenizer), sharer_pad_id=pad_token_id(sharer_tokenizer)
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the features (once, whatever the stage)."""
        if self._prepared:
            return
        self.train_features, self.val_features = self.data.prepare(
            self.receiver_tokenizer, self.sharer_tokenizer, self.aligner
        )
        self._prepared = True

    def _loader(self, features: list[dict], shuffle: bool, sampler: DistributedSampler | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle and sampler is None else None
        return DataLoader(
            features, batch_size=self.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
            generator=generator, collate_fn=self._collate, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _train_sampler(self) -> DistributedSampler | None:
        """This rank's shard of the training set in a distributed run; None in a single process."""
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1)
        if world <= 1:
            return None
        if len(self.train_features) < world:
            raise ValueError(
                f"InstructDataModule: {len(self.train_features)} training examples cannot be split over {world} "
                f"processes; use more data (data.train_size / fewer data.val_size) or fewer devices"
            )
        return DistributedSampler(self.train_features, num_replicas=world, rank=trainer.global_rank, shuffle=True,
                                  seed=self.seed, drop_last=True)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (seeded); in a distributed run, this rank's disjoint shard."""
        self.setup("fit")
        return self._loader(self.train_features, shuffle=True, sampler=self._train_sampler())

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in a fixed order; an empty list when ``val_size`` is 0."""
        self.setup("validate")
        return self._loader(self.val_features, shuffle=False) if self.val_features else []
