"""Distributed training on CPU: 2-process DDP (gloo) on tiny models, data sharding, rank-0 writes, frozen
LLMs outside the optimizer, and export from DeepSpeed ZeRO checkpoint directories."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lcf.export
from lcf.errors import LCFError
from lcf.export import export
from lcf.runtime import load_adapter
from lcf.training.run import train
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (tiny_pair is a fixture)

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "ddp_worker.py"
# launcher variables from an enclosing job would make Lightning join that job instead of starting its own
LAUNCHER_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK",
                 "GROUP_RANK")


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCHER_VARS and not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_", "OMPI_", "PMI_"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    return env


def adapter_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in load_file(str(adapter / "adapter.safetensors")).items()}


def test_ddp_two_processes_on_cpu(tiny_pair, tmp_path):  # noqa: F811
    """2 ranks x 2 epochs: disjoint shards covering the epoch, synchronised weights, rank-0 files, an
    adapter with the single-process adapter's shapes that loads through the runtime."""
    path = recipe(tiny_pair, tmp_path / "runs")
    out = tmp_path / "ddp"
    # 24 rows - 5 validation = 19 training examples: 9 per rank, one left over; batch 4 -> 3 steps an epoch
    overrides = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.threads=1",
                 "trainer.max_steps=6", "data.val_size=5", "trainer.val_every_n_steps=3",
                 "trainer.checkpoint_every_n_steps=3"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(WORKER), str(path), str(out), *overrides], cwd=REPO,
                          env=worker_env(), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, f"DDP run failed after {seconds:.0f} s:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"

    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["backend"], r["sampler"]) for r in records] == [
        (0, 2, "gloo", "EpochSampler"), (1, 2, "gloo", "EpochSampler")]
    train_index = records[0]["train_index"]
    assert records[1]["train_index"] == train_index and len(set(train_index)) == len(train_index) == 19
    orders = []
    for epoch in (0, 1):
        shards = [[i for e, batch in r["seen"] if e == epoch for i in batch] for r in records]
        assert [len(s) for s in shards] == [9, 9] and all(len(set(s)) == 9 for s in shards)  # none seen twice
        assert not set(shards[0]) & set(shards[1])  # the ranks' shards are disjoint
        union = set(shards[0]) | set(shards[1])
        assert union <= set(train_index) and len(union) == 19 - 1  # at most world_size - 1 left out
        orders.append(shards[0])
    assert orders[0] != orders[1]  # reshuffled every epoch (set_epoch)
    assert records[0]["translator_sha256"] == records[1]["translator_sha256"]  # gradients were all-reduced
    assert records[0]["frozen_grads"] == records[1]["frozen_grads"] == 0

    # rank 0 alone wrote the run's files and the adapter; rank 1 waited and got the same path
    run = tmp_path / "runs" / "tiny"
    assert json.loads((run / "summary.json").read_text())["steps"] == 6 and (run / "recipe.yaml").exists()
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"rank"')]
    assert sorted(p["rank"] for p in printed) == [0, 1] and len({p["adapter"] for p in printed}) == 1
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "rank0.json", "rank1.json"]  # no stray temp dirs
    adapter_dir = Path(printed[0]["adapter"])
    assert adapter_dir == (out / "adapter").resolve()
    # every rank's RNG state is in the checkpoint, rank 0's also at the top (reliability sweep 26)
    ckpt = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if "RNGState" in k)
    assert len(state["ranks"]) == 2 and torch.equal(state["torch"], state["ranks"][0]["torch"])

    adapter = load_adapter(adapter_dir)
    assert isinstance(adapter.generate("What is 2 + 3?", max_new_tokens=3), str)
    single = export(train(recipe(tiny_pair, tmp_path / "single"), ["trainer.max_steps=2"]), tmp_path / "single_adapter")
    assert adapter_shapes(adapter_dir) == adapter_shapes(single)
    ddp_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    single_cfg = json.loads((single / "adapter_config.json").read_text())
    assert ddp_cfg["translator"] == single_cfg["translator"] and ddp_cfg["shapes"] == single_cfg["shapes"]
    assert ddp_cfg["training"]["global_step"] == 6


def test_frozen_llms_hold_no_optimizer_state_or_gradients(tiny_pair, tmp_path, monkeypatch):  # noqa: F811
    import lightning as L

    import lcf.training.run as run_module

    seen = {}

    class Check(L.Callback):
        def on_train_end(self, trainer, pl_module):
            comm = pl_module.communicator
            translator = {id(p) for p in comm.translators.parameters()}
            optimizer = trainer.optimizers[0]
            seen["optimizer"] = {id(p) for g in optimizer.param_groups for p in g["params"]}
            seen["state"] = {id(p) for p in optimizer.state}
            seen["translator"] = translator
            frozen = [p for m in (comm.receiver, *comm.sharers) for p in m.parameters()]
            seen["frozen"] = len(frozen)
            seen["frozen_trainable"] = sum(p.requires_grad for p in frozen)
            seen["frozen_grads"] = sum(p.grad is not None for p in frozen)
            seen["module_params"] = {id(p) for p in pl_module.parameters()}

    callbacks = run_module._callbacks
    monkeypatch.setattr(run_module, "_callbacks", lambda settings, out: [*callbacks(settings, out), Check()])
    run = train(recipe(tiny_pair, tmp_path / "runs"), ["trainer.max_steps=2"])
    assert seen["frozen"] > 0 and seen["frozen_trainable"] == 0 and seen["frozen_grads"] == 0
    assert seen["optimizer"] == seen["translator"] == seen["module_params"]  # what DDP / ZeRO see and shard
    assert seen["state"] == seen["translator"]  # AdamW moments exist for translator parameters only
    ckpt = torch.load(run / "ckpt" / "last.ckpt", weights_only=True)
    assert all(k.startswith("communicator.translators.") for k in ckpt["state_dict"])
    assert len(ckpt["optimizer_states"][0]["state"]) == len(seen["translator"])


def make_zero_dir(ckpt: Path) -> Path:
    """Turn a checkpoint file into the directory layout Lightning's DeepSpeed strategy writes."""
    shards = ckpt.with_suffix(".ckpt.tmp")
    (shards / "checkpoint").mkdir(parents=True)
    shutil.move(str(ckpt), shards / "checkpoint" / "mp_rank_00_model_states.pt")
    (shards / "latest").write_text("checkpoint")
    shards.rename(ckpt)
    return ckpt


def test_export_of_a_zero_checkpoint_directory(tiny_pair, tmp_path, monkeypatch):  # noqa: F811
    run = train(recipe(tiny_pair, tmp_path / "runs"), ["trainer.max_steps=2", "trainer.checkpoint_every_n_steps=2"])
    plain = export(run, tmp_path / "plain", which="last")
    last = run / "ckpt" / "last.ckpt"
    original = torch.load(last, weights_only=True)
    for best in (run / "ckpt").glob("step*.ckpt"):
        best.unlink()
    make_zero_dir(last)
    assert lcf.export.is_zero_checkpoint(last) and not lcf.export.is_zero_checkpoint(run)

    monkeypatch.setattr(lcf.export, "deepspeed_installed", lambda: False)
    with pytest.raises(LCFError, match=r"last\.ckpt is a DeepSpeed ZeRO checkpoint.*pip install 'lcf\[deepspeed\]'"):
        export(run, tmp_path / "zero")
    assert not (tmp_path / "zero").exists()
    monkeypatch.undo()

    # with DeepSpeed "installed": the gathered fp32 state (keys as Lightning converts them) is exported
    calls = []

    def fake_convert(checkpoint_dir, output_file, tag=None):
        calls.append(Path(checkpoint_dir))
        state = {"_forward_module." + k: v for k, v in original["state_dict"].items()}
        state["_forward_module.communicator.translators.0.gates.temperature"] = torch.tensor(0.5)  # non-persistent
        return {"state_dict": state, "global_step": original["global_step"]}

    import lightning.pytorch.utilities.deepspeed as lightning_deepspeed

    monkeypatch.setattr(lcf.export, "deepspeed_installed", lambda: True)
    monkeypatch.setattr(lightning_deepspeed, "convert_zero_checkpoint_to_fp32_state_dict", fake_convert)
    for source in (run, last):  # the run directory finds ckpt/last.ckpt/; the directory itself works too
        zero = export(source, tmp_path / "zero", which="best")
        assert calls[-1] == last
        assert load_file(str(zero / "adapter.safetensors")).keys() == load_file(str(plain / "adapter.safetensors")).keys()
        for key, value in load_file(str(plain / "adapter.safetensors")).items():
            assert torch.equal(load_file(str(zero / "adapter.safetensors"))[key], value)
        assert json.loads((zero / "adapter_config.json").read_text())["training"]["global_step"] == 2
    load_adapter(zero)
