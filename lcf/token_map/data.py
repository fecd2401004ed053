"""Training rows of the per-token map, computed once from the frozen models and kept in memory.

Each item becomes ``{"x": (T, Ds), "y": (T, Dr), "head": Prepared (the receiver's cache before the context and
the prompt's tail), "answer": ids}``; rows are kept in ``rows_dtype`` (float16 halves the memory: about 41 KB a
context token for Gemma-3-270M -> SmolLM2-135M, so 1,100 SQuAD-sized items take about 7 GB). Items whose receiver
prompt exceeds a sliding window have no rows and are skipped and counted. The training loader is the seeded,
resumable one of the other recipes (:mod:`lcf.data.sampling`), so ``--resume`` continues with the same batches.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader

from lcf.data.sampling import EpochSampler, ResumableLoader
from lcf.errors import LCFError
from lcf.models.rows import WindowError
from lcf.token_map.rows import TokenRows, answer_ids, head_only


def item_rows(rows: TokenRows, items: list[Any], dtype: torch.dtype, what: str) -> tuple[list[dict], int]:
    """The rows of every item with an answer; returns them and the number skipped as too long."""
    out, skipped, t0 = [], 0, time.perf_counter()
    keep = [it for it in items if it.answers]
    for i, it in enumerate(keep):
        try:
            x, y, p = rows.features(it)
        except WindowError:
            skipped += 1
            continue
        out.append({"x": x.to(dtype), "y": y.to(dtype), "head": head_only(p),
                    "answer": answer_ids(rows.receiver_tokenizer, it.answers[0]).to(y.device), "id": str(it.id)})
        if (i + 1) % 100 == 0:
            print(f"{what}: rows of {i + 1}/{len(keep)} items, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    return out, skipped


def _as_list(batch: list[dict]) -> list[dict]:
    return batch


class TokenRowsDataModule(lightning.LightningDataModule):
    """Train / validation rows of a cross-context dataset (``split_examples()``) for a :class:`TokenRows` pair."""

    def __init__(self, data: Any, rows: TokenRows, batch_size: int, *, seed: int = 0,
                 rows_dtype: str = "float16") -> None:
        super().__init__()
        if not hasattr(data, "split_examples"):
            raise LCFError(f"the per-token map trains on cross-context data (data.type xc_mix, squad_xc, "
                           f"fact_transfer, ...), got {type(data).__name__}")
        self.data, self.rows, self.batch_size, self.seed = data, rows, batch_size, seed
        self.rows_dtype = getattr(torch, rows_dtype)
        self.train_features: list[dict] = []
        self.val_features: list[dict] = []
        self.skipped = 0
        self._prepared = False

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        train, val = self.data.split_examples()
        self.train_features, skipped = item_rows(self.rows, list(train), self.rows_dtype, "train")
        self.val_features, skipped_val = item_rows(self.rows, list(val), self.rows_dtype, "val")
        self.skipped = skipped + skipped_val
        if not self.train_features:
            raise LCFError("the per-token map needs training items with answers whose prompts fit the models' "
                           "windows; the data gave none")
        self._prepared = True

    def receiver_variance(self, y_mean: torch.Tensor) -> torch.Tensor:
        """Per-column variance of the receiver's training rows around ``y_mean`` (the MSE's scale)."""
        total = sum(((f["y"].to(y_mean.dtype) - y_mean) ** 2).sum(0) for f in self.train_features)
        return (total / sum(len(f["y"]) for f in self.train_features)).clamp(min=1e-6)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        rank = int(getattr(trainer, "global_rank", 0) or 0) if world > 1 else 0
        sampler = EpochSampler(self.train_features, batch_size=self.batch_size, seed=self.seed, num_replicas=world,
                               rank=rank)
        return ResumableLoader(self.train_features, batch_size=self.batch_size, sampler=sampler, collate_fn=_as_list,
                               generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if not self.val_features:
            return []
        return DataLoader(self.val_features, batch_size=self.batch_size, shuffle=False, collate_fn=_as_list)

    def transfer_batch_to_device(self, batch: list[dict], device: torch.device, dataloader_idx: int) -> list[dict]:
        """Items hold a prepared cache (frozen dataclasses that Lightning's generic mover refuses): moved here."""
        from lcf.models.kv import KVView
        from lcf.models.rows import Prepared

        def move(f: dict) -> dict:
            p = f["head"]
            view = KVView([k.to(device) for k in p.view.keys], [v.to(device) for v in p.view.values], p.view.seq_len,
                          p.view.specs)
            return f | {"x": f["x"].to(device), "y": f["y"].to(device), "answer": f["answer"].to(device),
                        "head": Prepared(view, p.a, p.b, p.tail.to(device))}
        return [move(f) for f in batch]
