"""End to end on the real pair (Gemma-3-270M -> SmolLM2-135M-Instruct): the quickstart recipe for two steps on
real data -> export -> lcf.runtime loads it from its folder and answers; the cross-context recipe -> export -> a
message sent here is received by a plain Python process that loads the receiver only (tests/test_wheel.py loads and
runs adapters in a runtime-only install)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lcf.data.xc.features import ContextTooLongError
from lcf.export import export
from lcf.runtime import load_adapter
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
    adapter = load_adapter(out)  # the models named in its config, loaded again
    assert adapter.sharer.name == "gemma3-270m" and adapter.receiver.name == "smollm2-135m-instruct"
    assert adapter.generate("What is the capital of France?", max_new_tokens=8)  # some text


@pytest.mark.real
def test_crosscontext_recipe_send_receive_on_the_real_pair(tmp_path, real_receiver, real_sharer):
    overrides = [f"output_dir={tmp_path}", "trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.progress=none",
                 "data.num_train=16", "data.num_val=4", "trainer.batch_size=4"]
    run = train(REPO / "recipes" / "crosscontext.yaml", overrides)
    out = export(run, tmp_path / "adapter", which="last")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["compressor"]["type"] == "span_pool" and cfg["compressor"]["args"]["spans"] == "paragraph"
    msg = tmp_path / "msg.safetensors"
    sender = load_adapter(out)
    assert sender.max_context_tokens() == 8192  # chunked capture: the sliding window no longer limits it
    sender.send("Lisbon is far. " * 200)  # ~1,000 tokens: more than the 511 a sliding layer keeps
    with pytest.raises(ContextTooLongError, match="8192"):
        sender.send("Lisbon is far. " * 2500)  # ~10,000 tokens
    msg.write_bytes(sender.send("Ravel Doskin lives in Lisbon.").to_bytes(quantize="int8"))
    receive = textwrap.dedent(f"""
        import sys
        from lcf.runtime import load_adapter
        adapter = load_adapter({str(out)!r}, with_sharer=False)
        print("ANSWER", repr(adapter.receive(open({str(msg)!r}, "rb").read(), "Where does Ravel Doskin live?",
                                             max_new_tokens=6)))
        print("SHARER", adapter.sharer, "HEAVY", sorted(m for m in ("lightning", "omegaconf") if m in sys.modules))
    """)
    assert 10_000 < msg.stat().st_size < 20_000  # 18 layers x K,V x 256 int8 values + scales + header
    got = subprocess.run([sys.executable, "-c", receive], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    assert "SHARER None HEAVY []" in got.stdout and "ANSWER '" in got.stdout
