"""Training step on a CUDA GPU: wall time and kernel launches per step, today's reference vs the library's defaults.

    python benchmarks/gpu_step.py [--recipe recipes/deepspeed_zero2.yaml] [--steps 12] [KEY=VALUE ...]

Each setting (``--settings``, run in the order given; the first is the reference of the last line)
trains the recipe (ZeRO-2 LCF-128, bf16-mixed, batch 8 by default) for ``--steps`` steps in this
process, with the same seed and data:

- ``reference``: the per-layer translator path, the sharer's prefill before the receiver's (no side
  stream), the frozen LLMs at their cards' dtype (fp32), batches in data order, cuDNN attention
  allowed: the step as it was before the stacked path.
- ``stacked``, ``stacked+overlap``: the stacked path, without and with side-stream prefills.
- ``stacked+bf16`` (cuDNN attention allowed), ``stacked+bf16-cudnn`` (not), ``stacked+bf16-cudnn+bucket``:
  with ``trainer.model_dtype=bfloat16`` and ``data.bucket_by_length=true``.
- ``defaults``: the library's defaults (stacked; side streams for batches of 2+ rows; cuDNN attention
  off while training); ``defaults+bf16+bucket``: plus the two recipe switches.
- ``compiled``, ``cudagraphs``: ``defaults+bf16+bucket`` with lengths padded to multiples of 64 and the
  frozen LLMs' bodies under ``torch.compile`` (``trainer.compile_models=default`` / ``reduce-overhead``,
  the latter with CUDA graphs). Their first steps of each shape compile: give them ``--steps`` to spare
  and a later ``--profile-step``.

Per setting: the median wall time of the steps after the first ``--skip`` (2; ``torch.cuda.synchronize``
at both ends), and for one step (``--profile-step``, the 5th by default) a ``torch.profiler`` trace: the
GPU kernels it ran (one launch each; memcpy/memset counted apart), their summed GPU time, and the
CPU-side launch calls. Peak GPU memory per setting. The last line gives last / first setting for
kernels and step time (targets <= 0.1 and <= 1/3). Random-weight real architectures are fine
(``benchmarks/random_pair.py``): none of this depends on the weights.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile

import lcf.training.run as run_module

LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                "cudaGraphLaunch")


CUDNN = "trainer.cudnn_attention=true"
#: name: (recipe overrides, stacked translator path, prefills overlapped on side streams: None = the library's rule)
SETTINGS = {
    "reference": ([CUDNN], False, False),
    "stacked": ([CUDNN], True, False),
    "stacked+overlap": ([CUDNN], True, True),
    "stacked+bf16": ([CUDNN, "trainer.model_dtype=bfloat16"], True, False),
    "stacked+bf16-cudnn": (["trainer.model_dtype=bfloat16"], True, False),
    "stacked+bf16-cudnn+bucket": (["trainer.model_dtype=bfloat16", "data.bucket_by_length=true"], True, False),
    "defaults": ([], True, None),
    "defaults+bf16+bucket": (["trainer.model_dtype=bfloat16", "data.bucket_by_length=true"], True, None),
    "compiled": (["trainer.model_dtype=bfloat16", "data.bucket_by_length=true", "data.pad_to_multiple=64",
                  "trainer.compile_models=default"], True, None),
    "cudagraphs": (["trainer.model_dtype=bfloat16", "data.bucket_by_length=true", "data.pad_to_multiple=64",
                    "trainer.compile_models=reduce-overhead"], True, None),
}


class StepProbe(L.Callback):
    """Times every step, profiles one, and sets the communicator's translator path and prefill overlap."""

    def __init__(self, profile_step: int, stacked: bool, overlap: bool):
        self.profile_step, self.stacked, self.overlap = profile_step, stacked, overlap
        self.steps: list[float] = []
        self.trace: dict = {}
        self.peak = 0
        self._prof = None
        self._t0 = 0.0

    def on_train_start(self, trainer, pl_module):
        comm = pl_module.communicator
        comm.overlap_prefills = self.overlap
        for tr in comm.translators:
            tr.stacked = self.stacked
        self.paths = sorted({"stacked" if getattr(tr, "stacked", False) else "per-layer" for tr in comm.translators})
        torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.profile_step:
            self._prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self._prof.__enter__()
        torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        torch.cuda.synchronize()
        self.steps.append(time.perf_counter() - self._t0)
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            self.trace = summarise(self._prof)
            self._prof = None

    def on_train_end(self, trainer, pl_module):
        self.peak = torch.cuda.max_memory_allocated()


def summarise(prof) -> dict:
    events = prof.events()
    gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    copies = [e for e in gpu if "memcpy" in e.name.lower() or "memset" in e.name.lower()]
    kernels = [e for e in gpu if e not in copies]
    launches = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.name in LAUNCH_CALLS]
    return {
        "kernels": len(kernels), "copies": len(copies), "launch_calls": len(launches),
        "kernel_ms": sum(e.device_time for e in kernels) / 1000.0,
    }


def run_setting(name: str, recipe: str, overrides: list[str], steps: int, out: Path, profile_step: int = 4,
                skip: int = 2) -> dict:
    extra, stacked, overlap = SETTINGS[name]
    probe = StepProbe(profile_step=profile_step, stacked=stacked, overlap=overlap)
    callbacks = run_module._callbacks
    run_module._callbacks = lambda settings, folder: [*callbacks(settings, folder), probe]
    try:
        run = run_module.train(recipe, [
            "trainer.accelerator=gpu", "trainer.devices=1", f"trainer.max_steps={steps}",
            f"trainer.val_every_n_steps={steps}", "trainer.limit_val_batches=1", f"trainer.checkpoint_every_n_steps={steps}",
            "trainer.progress=none", "data.val_size=8", f"output_dir={out}", f"name={name.replace('+', '_')}",
            *overrides, *extra])
    finally:
        run_module._callbacks = callbacks
    summary = json.loads((run / "summary.json").read_text())
    later = probe.steps[skip:] or probe.steps
    return {"setting": name, "paths": probe.paths, "step_ms": 1000 * statistics.median(later),
            "steps_ms": [round(1000 * s, 1) for s in probe.steps], "peak_gib": probe.peak / 2**30,
            "train_loss": summary["metrics"].get("train/loss"), **probe.trace}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/deepspeed_zero2.yaml")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--settings", nargs="+", default=["reference", "defaults"], choices=list(SETTINGS),
                    help="settings to run, in order; the first is the reference of the last line's ratios")
    ap.add_argument("--profile-step", type=int, default=4, help="the step (from 0) whose kernels are counted")
    ap.add_argument("--skip", type=int, default=2, help="steps left out of the median (the first ones)")
    ap.add_argument("--json", help="write the results here as JSON")
    ap.add_argument("overrides", nargs="*", help="recipe overrides for every setting, e.g. data_root=DIR")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_step.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    print(f"{args.recipe} on {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.steps} steps per "
          f"setting; median of steps {args.skip + 1}-{args.steps}; kernels of step {args.profile_step + 1}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            row = run_setting(name, args.recipe, args.overrides, args.steps, Path(tmp), args.profile_step, args.skip)
            rows.append(row)
            print(f"{name:>26}: {'/'.join(row['paths'])}, median step {row['step_ms']:.1f} ms "
                  f"(steps {row['steps_ms']}), kernels {row.get('kernels')} + {row.get('copies')} copies "
                  f"({row.get('kernel_ms', 0):.1f} ms of GPU time), launch calls {row.get('launch_calls')}, "
                  f"peak {row['peak_gib']:.2f} GiB, loss {row['train_loss']:.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    ref, new = rows[0], rows[-1]
    print(f"{new['setting']} / {ref['setting']}: kernels per step {new['kernels'] / max(1, ref['kernels']):.3f} (target <= 0.1), "
          f"step time {new['step_ms'] / ref['step_ms']:.3f} (target <= 0.333)")


if __name__ == "__main__":
    main()
