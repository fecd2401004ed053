"""End to end on the real pair (Gemma-3-270M -> SmolLM2-135M-Instruct): quickstart recipe for two
steps on real data -> export -> a plain Python process loads it through lcf.runtime and answers."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lcf.export import export
from lcf.training.run import train

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.real
def test_quickstart_train_export_runtime(tmp_path, data_root, real_receiver, real_sharer):
    overrides = [f"output_dir={tmp_path}", f"data_root={data_root}", "trainer.max_steps=2",
                 "trainer.val_every_n_steps=2", "trainer.progress=none", "data.train_size=8", "data.val_size=4"]
    run = train(REPO / "recipes" / "quickstart.yaml", overrides)
    out = export(run, tmp_path / "adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["sharer"]["name"] == "gemma3-270m" and cfg["receiver"]["name"] == "smollm2-135m-instruct"
    assert cfg["translator"]["type"] == "lcf_lowrank" and len(cfg["layer_map"]["sharer_of"]) == 30
    code = textwrap.dedent(f"""
        import sys
        from lcf.runtime import load_adapter
        adapter = load_adapter({str(out)!r})
        print("ANSWER", repr(adapter.generate("What is the capital of France?", max_new_tokens=8)))
        print("HEAVY", sorted(m for m in ("lightning", "deepspeed", "omegaconf") if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout
    answer = next(line for line in proc.stdout.splitlines() if line.startswith("ANSWER"))
    assert len(answer) > len("ANSWER ''")
