"""Exact resumption: a run killed with SIGKILL and resumed with --resume trains on the same batches,
with the same random draws, as an uninterrupted run (per-step losses equal); and the sampler that
makes it so (seeded, resumable, shardable, length-bucketed)."""
from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
import warnings

import pytest

from lcf.data.sampling import EpochSampler, ResumableLoader
from lcf.training.run import train
from tests.conftest import REPO as REPO_ROOT
from tests.test_train_export import recipe, tiny_pair  # noqa: F401

KILLER = """
import os, signal, sys
import lightning as L
import lcf.training.run as run

class Kill(L.Callback):  # SIGKILL: no cleanup, no final checkpoint, like an out-of-memory kill
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

callbacks = run._callbacks
run._callbacks = lambda settings, out: [*callbacks(settings, out), Kill()]
run.train(sys.argv[2], sys.argv[3:])
"""


def step_losses(metrics_csv) -> dict[int, float]:
    with open(metrics_csv) as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_killed_and_resumed_run_matches_uninterrupted_per_step(tiny_pair, tmp_path):  # noqa: F811
    # 20 training examples, batch 4: 5 batches an epoch; killed at step 5 (last.ckpt at step 4, mid-epoch),
    # resumed to step 9: the rest of epoch 0, then epoch 1
    overrides = ["trainer.max_steps=9", "trainer.threads=1", "data.val_size=4"]
    whole = train(recipe(tiny_pair, tmp_path / "whole"), overrides)
    path = recipe(tiny_pair, tmp_path / "killed")
    proc = subprocess.run([sys.executable, "-c", KILLER, "5", str(path), *overrides], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run = tmp_path / "killed" / "tiny"
    assert (run / "ckpt" / "last.ckpt").exists() and not (run / "summary.json").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(path, overrides, resume=True)
    assert not [w for w in caught if "not resumable" in str(w.message)]  # Lightning's mid-epoch warning is gone
    want, got = step_losses(whole / "logs" / "metrics.csv"), step_losses(resumed / "logs" / "resume_1" / "metrics.csv")
    assert sorted(got) == [4, 5, 6, 7, 8] and sorted(want) == list(range(9))  # 0-based steps 4..8 after resuming
    assert [round(got[s], 5) for s in got] == [round(want[s], 5) for s in got]


def test_sampler_shards_are_disjoint_deterministic_and_reshuffled():
    n, lengths = 23, [random.Random(i).randint(1, 60) for i in range(23)]
    for bucket in (False, True):
        def shards(epoch, world):
            return [EpochSampler(range(n), batch_size=4, seed=7, num_replicas=world, rank=r, bucket_by_length=bucket,
                                 lengths=lengths).order(epoch) for r in range(world)]
        for world in (1, 2, 3):
            parts = shards(0, world)
            flat = [i for p in parts for i in p]
            assert len(flat) == len(set(flat)) == (n // world) * world  # no example twice, at most world-1 dropped
            assert {len(p) for p in parts} == {n // world}  # every rank as many examples (so batches)
            assert parts == shards(0, world) and parts != shards(1, world)  # per (seed, epoch)


def test_length_buckets_reduce_padding_and_keep_whole_batches():
    n, bs = 64, 4
    lengths = [random.Random(i).randint(1, 100) for i in range(n)]

    def padding(order):
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    plain = EpochSampler(range(n), batch_size=bs, seed=1).order(0)
    bucketed = EpochSampler(range(n), batch_size=bs, seed=1, bucket_by_length=True, lengths=lengths).order(0)
    assert sorted(bucketed) == sorted(plain) == list(range(n))
    assert padding(bucketed) < padding(plain) / 3
    odd = EpochSampler(range(10), batch_size=4, seed=1, bucket_by_length=True, lengths=list(range(10))).order(0)
    assert len(odd) == 10 and odd[-2:] == [1, 0]  # the partial batch stays last
    with pytest.raises(ValueError, match="one length per example"):
        EpochSampler(range(5), batch_size=2, bucket_by_length=True)


@pytest.mark.parametrize("bucket", [False, True])
def test_loader_state_resumes_mid_epoch(bucket):
    n, lengths = 22, list(range(22))

    def loader():
        s = EpochSampler(list(range(n)), batch_size=4, seed=3, bucket_by_length=bucket, lengths=lengths)
        return s, ResumableLoader(list(range(n)), batch_size=4, sampler=s)

    s, dl = loader()
    s.set_epoch(2)
    it = iter(dl)
    first = [next(it).tolist() for _ in range(2)]
    state = dl.state_dict()
    assert (state["epoch"], state["batches"]) == (2, 2)
    s2, dl2 = loader()
    dl2.load_state_dict(state)
    s2.set_epoch(2)
    assert first + [b.tolist() for b in dl2] == [b.tolist() for b in dl]  # the epoch, exactly once
    s2.set_epoch(3)
    assert len(list(dl2)) == 6  # the next epoch is whole again
    s3, dl3 = loader()
    dl3.load_state_dict(state | {"batch_size": 8})  # other data settings: the epoch restarts (with a warning)
    s3.set_epoch(2)
    assert len(list(dl3)) == 6


def test_recipe_switch_bucket_by_length_reaches_the_training_loader(tmp_path):
    import json

    from lcf.config import load_recipe, validate_recipe
    from lcf.data.datamodule import InstructDataModule, receiver_length
    from lcf.registry import token_aligners
    from lcf.training.run import build_data
    from tests.tiny_tokenizers import tiny_receiver_tokenizer, tiny_sharer_tokenizer

    rows = [{"instruction": "word " * (1 + i % 9), "input": "", "output": "ok " * (1 + i % 5)} for i in range(40)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "r.yaml").write_text(
        "sharer: gemma3-270m\nreceiver: smollm2-135m-instruct\ntranslator: {type: lcf_lowrank, rank: 8}\n"
        f"data: {{type: instruct_json, files: [d.json], data_root: {tmp_path}, val_size: 0, bucket_by_length: true}}\n")
    recipe = validate_recipe(load_recipe(tmp_path / "r.yaml"))
    aligner = token_aligners.build({"type": "maximal_coverage"}, "token_alignment")
    dm = InstructDataModule(build_data(recipe), tiny_receiver_tokenizer(), tiny_sharer_tokenizer(), aligner,
                            batch_size=4)
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader) and loader.sampler.bucket_by_length
    lengths = [receiver_length(f) for f in dm.train_features]
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in loader.batch_sampler]
    plain = EpochSampler(dm.train_features, batch_size=4, seed=dm.seed).order(0)
    plain_spread = [max(lengths[i] for i in plain[j:j + 4]) - min(lengths[i] for i in plain[j:j + 4])
                    for j in range(0, 40, 4)]
    assert len(spread) == 10 and sum(spread) < sum(plain_spread) / 2  # batches of similar lengths


def test_single_process_order_is_the_seeded_shuffling_dataloaders():
    """Single-process runs see the examples in the order lcf's loader had before it became resumable
    (DataLoader(shuffle=True) with a seeded generator), so earlier results stay reproducible."""
    import torch
    from torch.utils.data import DataLoader

    for n, bs in ((20, 4), (23, 4), (7, 3)):
        old = DataLoader(list(range(n)), batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(5))
        for epoch in range(4):
            assert [i for b in old for i in b.tolist()] == EpochSampler(range(n), batch_size=bs, seed=5).order(epoch)
