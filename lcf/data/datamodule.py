"""Lightning DataModule over :class:`lcf.data.instruct.InstructData`.

Features are built once in :meth:`InstructDataModule.setup`; batches are padded by
:func:`lcf.data.instruct.collate`. In distributed runs Lightning replaces the sampler with a
``DistributedSampler`` (which shuffles with its own seed); nothing here prevents that.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader

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

    def _loader(self, features: list[dict], shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            features, batch_size=self.batch_size, shuffle=shuffle, generator=generator, collate_fn=self._collate,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (seeded)."""
        self.setup("fit")
        return self._loader(self.train_features, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in a fixed order; an empty list when ``val_size`` is 0."""
        self.setup("validate")
        return self._loader(self.val_features, shuffle=False) if self.val_features else []
