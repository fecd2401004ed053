"""Train -> export -> runtime on tiny models, and the failure paths around them."""
from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

from lcf.errors import LCFError, RecipeError
from lcf.export import export
from lcf.runtime import AdapterError, load_adapter
from lcf.training.run import train
from tests.conftest import tiny_gemma3, tiny_llama
from tests.tiny_tokenizers import tiny_receiver_tokenizer, tiny_sharer_tokenizer

ROWS = [
    {"instruction": f"What is {a} + {b}?", "input": "", "output": f"The answer is {a + b}."}
    for a in range(1, 7) for b in range(1, 5)
]


def write_tiny_pair(root: Path, sharer_window: int = 4) -> Path:
    """The tiny receiver (Llama-like) and sharer (Gemma-3-like, sliding window ``sharer_window``) with their
    tokenizers under ``root``, and instruction rows in ``root / "data.json"``."""
    r_tok, s_tok = tiny_receiver_tokenizer(), tiny_sharer_tokenizer()
    receiver = tiny_llama(vocab_size=len(r_tok))
    sharer = tiny_gemma3(vocab_size=len(s_tok), sliding_window=sharer_window)
    for name, model, tok in (("receiver", receiver, r_tok), ("sharer", sharer, s_tok)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "data.json").write_text(json.dumps(ROWS))
    return root


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    return write_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))


def recipe(root: Path, out: Path, translator: str = "type: lcf_lowrank, rank: 8", extra: str = "") -> Path:
    text = f"""
        name: tiny
        seed: 0
        sharer: {root / 'sharer'}
        receiver: {root / 'receiver'}
        output_dir: {out}
        data_root: {root}
        layer_map: {{type: nearest}}
        translator: {{{translator}}}
        data: {{type: instruct_json, files: [data.json], val_size: 4, max_prompt_tokens: 200, max_response_tokens: 16}}
        trainer: {{max_steps: 4, batch_size: 4, lr: 0.01, val_every_n_steps: 2, checkpoint_every_n_steps: 2,
                  accelerator: cpu, devices: 1, progress: none, log_every_n_steps: 1}}
    """
    path = out / "recipe_in.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    return path


def test_train_export_load_generate(tiny_pair, tmp_path):
    run = train(recipe(tiny_pair, tmp_path / "runs"))
    assert (run / "recipe.yaml").exists() and (run / "ckpt" / "last.ckpt").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and "val/loss" in summary["metrics"]
    metrics = (run / "logs" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "train/lr" in metrics and "gates/r0_k" in metrics
    best = json.loads((export(run, tmp_path / "best") / "adapter_config.json").read_text())["training"]
    assert best["checkpoint"] != "last.ckpt" and best["global_step"] in (2, 4)  # the best validation loss
    # the best checkpoint carries the validation loss of its own weights (logged at step - 1, 0-based)
    vals = {int(r["step"]) + 1: float(r["val/loss"]) for r in csv.DictReader(io.StringIO(metrics)) if r.get("val/loss")}
    assert sorted(vals) == [2, 4]
    step, val = min(vals.items(), key=lambda kv: kv[1])
    assert best["checkpoint"] == f"step{step}-val{val:.4f}.ckpt" and best["global_step"] == step
    out = export(run, tmp_path / "adapter", which="last")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter.safetensors", "adapter_config.json"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["translator"] == {"type": "lcf_lowrank", "args": {"rank": 8, "mlp_ratio": 4, "dropout": 0.0,
                                                                 "mlp_blocks": 2, "read_receiver": True}}
    assert cfg["layer_map"]["sharer_of"] == [0, 2] and cfg["training"]["global_step"] == 4
    assert cfg["num_parameters"] > 0 and cfg["sharer"]["fingerprint"]["config"]
    adapter = load_adapter(out)
    ckpt = torch.load(run / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    for k, v in adapter.translator.state_dict().items():
        assert torch.equal(v, ckpt["communicator.translators.0." + k])
    text = adapter.generate("What is 2 + 3?", max_new_tokens=5)
    assert isinstance(text, str)
    assert len(adapter.generate(["What is 1 + 1?", "What is 4 + 2?"], max_new_tokens=3)) == 2


def test_resume_continues_from_last_checkpoint(tiny_pair, tmp_path):
    path = recipe(tiny_pair, tmp_path / "runs")
    run = train(path)
    run = train(path, ["trainer.max_steps=6"], resume=True)
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    assert (run / "logs" / "metrics.csv").exists()  # the first part's log is kept
    assert (run / "logs" / "resume_1" / "metrics.csv").exists()
    with pytest.raises(LCFError, match="no checkpoint"):
        train(recipe(tiny_pair, tmp_path / "other"), resume=True)


def test_frozen_models_in_bfloat16(tiny_pair, tmp_path, monkeypatch):
    import lcf.training.run as run_module

    seen = {}
    build = run_module.build_pair

    def spy(recipe, *, dtype=None):
        pair = build(recipe, dtype=dtype)
        seen["dtypes"] = {next(m.model.parameters()).dtype for m in (pair.sharer, pair.receiver)}
        return pair

    monkeypatch.setattr(run_module, "build_pair", spy)
    run = train(recipe(tiny_pair, tmp_path / "runs"), ["trainer.max_steps=2", "trainer.model_dtype=bfloat16"])
    assert seen["dtypes"] == {torch.bfloat16}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["metrics"]["train/loss"])
    adapter = load_adapter(export(run, tmp_path / "adapter"))  # fp32 translator, models loaded at the card's dtype
    assert next(adapter.translator.parameters()).dtype == torch.float32


def test_model_dtype_must_be_a_float_dtype():
    from lcf.training.settings import TrainerSettings

    with pytest.raises(ValueError, match="model_dtype must be float32, bfloat16, float16 or null"):
        TrainerSettings(model_dtype="bf16")


def test_training_turns_cudnn_attention_off_on_cuda_and_restores_it():
    from lcf.communicator import Communicator
    from lcf.training.module import LCFModule
    from lcf.training.settings import TrainerSettings
    from tests.conftest import tiny_gemma3, tiny_llama

    comm = Communicator(tiny_llama(), [tiny_gemma3(seed=10)], [torch.nn.Linear(2, 2)])
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        for allowed, device in ((False, "cuda:0"), (True, "cuda:0"), (False, "cpu")):
            torch.backends.cuda.enable_cudnn_sdp(True)
            module = LCFModule(comm, TrainerSettings(cudnn_attention=allowed))
            module._device = torch.device(device)  # the hooks only read the device: no GPU needed
            module.on_fit_start()
            assert torch.backends.cuda.cudnn_sdp_enabled() == (allowed or device == "cpu"), (allowed, device)
            module.on_fit_end()
            assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_user_subclass_trains_from_a_recipe(tiny_pair, tmp_path, monkeypatch):
    (tmp_path / "my_translators.py").write_text(textwrap.dedent("""
        import torch
        from lcf.registry import translators
        from lcf.translators import LowRankJointKV

        @translators.register("scaled_lowrank")
        class ScaledLowRank(LowRankJointKV):
            def __init__(self, shapes, scale: float = 0.5, **kwargs):
                super().__init__(shapes, **kwargs)
                self.scale = scale

            def delta(self, layer, sk, sv, rk, rv):
                dk, dv = super().delta(layer, sk, sv, rk, rv)
                return self.scale * dk, self.scale * dv
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = recipe(tiny_pair, tmp_path / "runs", "type: scaled_lowrank, scale: 0.25, rank: 8",
                  "imports: [my_translators]\n")
    run = train(path, ["trainer.max_steps=2"])
    adapter = load_adapter(export(run, tmp_path / "adapter"))
    assert type(adapter.translator).__name__ == "ScaledLowRank" and adapter.translator.scale == 0.25
    with pytest.raises(RecipeError, match=r"translator\.scael.*Did you mean 'scale'"):
        train(recipe(tiny_pair, tmp_path / "bad", "type: scaled_lowrank, scael: 0.25", "imports: [my_translators]\n"))


@pytest.fixture(scope="module")
def exported(tiny_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    run = train(recipe(tiny_pair, out / "runs"), ["trainer.max_steps=2"])
    return export(run, out / "adapter")


def copy_adapter(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_adapter_refuses_another_pair(exported, tmp_path):
    other = tiny_llama(vocab_size=len(tiny_receiver_tokenizer()), layers=3)
    with pytest.raises(AdapterError, match="trained for receiver.*fingerprint"):
        load_adapter(exported, receiver=(other, tiny_receiver_tokenizer()))


def test_truncated_and_corrupted_weights(exported, tmp_path):
    bad = copy_adapter(exported, tmp_path / "truncated")
    data = (bad / "adapter.safetensors").read_bytes()
    (bad / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="truncated or corrupted"):
        load_adapter(bad)
    junk = copy_adapter(exported, tmp_path / "junk")
    (junk / "adapter.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(AdapterError, match="truncated or corrupted"):
        load_adapter(junk)


def test_unknown_translator_and_shape_mismatch(exported, tmp_path):
    bad = copy_adapter(exported, tmp_path / "unknown")
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["translator"]["type"] = "lcf_lowrnak"
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(LCFError, match="unknown translator 'lcf_lowrnak'.*Did you mean 'lcf_lowrank'"):
        load_adapter(bad)
    cfg["translator"] = {"type": "lcf_lowrank", "args": {"rank": 16, "mlp_ratio": 4, "dropout": 0.0, "mlp_blocks": 2}}
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="shape mismatches"):
        load_adapter(bad)
    # adapters exported before `read_receiver` existed load as the joint module; claiming a sharer-only
    # latent for joint weights is a shape mismatch (the down-projection's input width)
    cfg["translator"] = {"type": "lcf_lowrank", "args": {"rank": 8, "mlp_ratio": 4, "dropout": 0.0, "mlp_blocks": 2}}
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    assert load_adapter(bad).translator.read_receiver is True
    cfg["translator"]["args"]["read_receiver"] = False
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="shape mismatches"):
        load_adapter(bad)


def test_unknown_config_keys_warn(exported, tmp_path, caplog):
    odd = copy_adapter(exported, tmp_path / "odd")
    cfg = json.loads((odd / "adapter_config.json").read_text())
    cfg["future_feature"] = 1
    (odd / "adapter_config.json").write_text(json.dumps(cfg))
    load_adapter(odd)
    assert "future_feature" in caplog.text


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_pair, tmp_path, monkeypatch):
    from lcf.communicator import Communicator
    from lcf.training.module import NonFiniteLossError

    original = Communicator.forward
    calls = {"n": 0}

    def poisoned(self, batch, fuse=True):
        out = original(self, batch, fuse)
        calls["n"] += 1
        if self.training and calls["n"] >= 4:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(Communicator, "forward", poisoned)
    path = recipe(tiny_pair, tmp_path / "runs", extra="")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, batch \d+, global step \d+.*last.ckpt"):
        train(path, ["trainer.max_steps=10", "trainer.checkpoint_every_n_steps=1"])
    assert (tmp_path / "runs" / "tiny" / "ckpt" / "last.ckpt").exists()


def test_export_errors(tmp_path):
    with pytest.raises(LCFError, match="neither a checkpoint file nor a run directory"):
        export(tmp_path, tmp_path / "out")
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        load_adapter(tmp_path)
