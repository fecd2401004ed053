"""Driver of the 2-process DDP test (tests/test_distributed.py); not collected by pytest.

    python tests/ddp_worker.py RECIPE OUT_DIR [key=value ...]

Trains the recipe with ``lcf.training.run.train`` and exports the run with ``lcf.export.export`` in
every process. Lightning's ``ddp`` strategy launches the other ranks by running this same command
again, so the instrumentation below is installed in every rank: batches carry the examples'
``index`` and a callback writes, per rank, the indices it trained on (with the epoch), the training
set's indices and a digest of its translator weights to ``OUT_DIR/rank<R>.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import lightning as L
import torch

import lcf.data.datamodule as datamodule
import lcf.training.run as run
from lcf.data.features import collate
from lcf.export import export


def collate_with_index(features, **pad_ids) -> dict:
    batch = collate(features, **pad_ids)
    batch["index"] = torch.tensor([f["index"] for f in features], dtype=torch.long)
    return batch


class Record(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out, self.seen = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append([trainer.current_epoch, batch["index"].tolist()])

    def on_train_end(self, trainer, pl_module) -> None:
        digest = hashlib.sha256()
        for key, value in sorted(pl_module.communicator.translators.state_dict().items()):
            digest.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
        frozen = [pl_module.communicator.receiver, *pl_module.communicator.sharers]
        record = {
            "rank": trainer.global_rank, "world_size": trainer.world_size, "seen": self.seen,
            "train_index": [f["index"] for f in trainer.datamodule.train_features],
            "sampler": type(trainer.train_dataloader.sampler).__name__, "translator_sha256": digest.hexdigest(),
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
            "frozen_grads": sum(p.grad is not None or p.requires_grad for m in frozen for p in m.parameters()),
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main(argv: list[str]) -> None:
    recipe, out, overrides = argv[0], Path(argv[1]), argv[2:]
    out.mkdir(parents=True, exist_ok=True)
    datamodule.collate = collate_with_index  # the DataModule binds `collate` when it is constructed
    callbacks = run._callbacks
    run._callbacks = lambda settings, o: [*callbacks(settings, o), Record(out)]
    run_dir = run.train(recipe, overrides)
    adapter = export(run_dir, out / "adapter", which="last")  # every rank calls it; rank 0 writes
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    # the line in one write() of its own (under PIPE_BUF, so atomic): flushed together with earlier buffered
    # output it could exceed PIPE_BUF, be split, and interleave with the other rank's line on the shared pipe
    sys.stdout.flush()
    line = json.dumps({"rank": rank, "run": str(run_dir), "adapter": str(adapter)}) + "\n"
    os.write(sys.stdout.fileno(), line.encode())
    if torch.distributed.is_initialized():  # join gloo's threads before exit: a rank once aborted in teardown
        torch.distributed.barrier()          # ("terminate called without an active exception", rc -6)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
