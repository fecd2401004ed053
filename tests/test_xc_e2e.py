"""Cross-context (LCF-X) on the tiny pair: train -> export -> send/receive, messages across processes, errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from lcf.data.xc.features import XCExample
from lcf.errors import LCFError, RecipeError
from lcf.eval.xc import build_xc_systems, evaluate_xc, format_xc_table
from lcf.export import export
from lcf.runtime.messages import LatentMessage, MessageError
from lcf.runtime import AdapterError, load_adapter
from lcf.training.run import train
from tests.conftest import tiny_gemma3
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (fixture)

XC = "compressor: {type: span_pool, spans: paragraph}\n"
DATA = ("data: {type: fact_transfer, num_train: 24, num_val: 4, num_paragraphs: 2, max_context_tokens: 200,"
        " max_response_tokens: 8}\n")
CONTEXT = "The cat sat on the mat.\n\nA dog ran in the park."
REPO = Path(__file__).resolve().parent.parent


def payload(data: bytes) -> int:
    """Tensor bytes of a safetensors blob (without its JSON header)."""
    return len(data) - 8 - int.from_bytes(data[:8], "little")


def xc_recipe(root: Path, out: Path) -> Path:
    path = recipe(root, out)
    text = path.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("data:")) + "\n"
    path.write_text(text + XC + DATA)
    return path


@pytest.fixture(scope="module")
def xc_pair(tiny_pair, tmp_path_factory):  # noqa: F811
    """The tiny pair with a sharer whose sliding window (256) holds whole contexts."""
    root = tmp_path_factory.mktemp("xc_pair")
    shutil.copytree(tiny_pair, root, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(root / "sharer")
    tiny_gemma3(vocab_size=len(tok), sliding_window=256).save_pretrained(root / "sharer")
    return root


@pytest.fixture(scope="module")
def xc_adapter_dir(xc_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("xc")
    run = train(xc_recipe(xc_pair, out / "runs"))
    return export(run, out / "adapter", which="last")


@pytest.fixture(scope="module")
def xc_adapter(xc_adapter_dir):
    return load_adapter(xc_adapter_dir)


def test_export_holds_translator_and_compressor(xc_adapter_dir, xc_adapter):
    cfg = json.loads((xc_adapter_dir / "adapter_config.json").read_text())
    assert cfg["compressor"] == {"type": "span_pool", "args": {"spans": "paragraph", "span_tokens": 32, "max_spans": 64,
                                                               "slots": 1, "slot_mode": "spans", "read": "attend",
                                                               "read_offset": 1}}
    comp = xc_adapter.compressor
    assert cfg["num_parameters"] == xc_adapter.translator.num_parameters() + comp.num_parameters()
    ckpt = torch.load(xc_adapter_dir.parent / "runs" / "tiny" / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    for k, v in comp.state_dict().items():
        assert torch.equal(v, ckpt["communicator.compressors.0." + k])
    assert any(v.abs().sum() > 0 for v in comp.state_dict().values())  # trained away from the zero init


def test_send_receive_equals_in_process_fusion(xc_adapter):
    msg = xc_adapter.send(CONTEXT)
    assert msg.layers == xc_adapter.compressor.sharer_layers and msg.header["summary_len"] == 1
    data = msg.to_bytes()
    again = LatentMessage.from_bytes(data)
    assert all(torch.equal(again.keys[s], msg.keys[s]) for s in msg.layers)
    a = xc_adapter.receive(data, "Where did the cat sit?", max_new_tokens=4)
    # the same answer when the communicator computes the summary itself (no serialisation)
    comm = xc_adapter.communicator
    batch = xc_adapter.encode_questions(["Where did the cat sit?"]) | xc_adapter.encode_contexts([CONTEXT])
    new = comm.generate(batch, max_new_tokens=4, pad_token_id=0)
    assert a == xc_adapter.receiver.tokenizer.decode(new[0], skip_special_tokens=True).strip()
    q8 = msg.to_bytes(quantize="int8")
    assert payload(q8) < payload(data) / 2  # int8 values + one float32 scale per head vs float32 values
    deq = LatentMessage.from_bytes(q8)
    for s in msg.layers:
        scale = msg.keys[s].abs().amax() / 127
        assert (deq.keys[s] - msg.keys[s]).abs().max() <= scale / 2 + 1e-7
    # another span scheme and span count still run
    assert isinstance(xc_adapter.receive(xc_adapter.send(CONTEXT, spans="sentence"), "Where?", max_new_tokens=2), str)
    assert isinstance(xc_adapter.receive(xc_adapter.send(CONTEXT + "\n\nhello world.", spans="tokens"), "Where?",
                                         max_new_tokens=2), str)
    batch_answers = xc_adapter.receive([data, q8], ["Where did the cat sit?", "Where?"], max_new_tokens=2)
    assert len(batch_answers) == 2


def test_bad_messages_are_refused(xc_adapter):
    msg = xc_adapter.send(CONTEXT)
    data = msg.to_bytes()
    with pytest.raises(MessageError, match="truncated or corrupted"):
        xc_adapter.receive(data[: len(data) // 2], "Where?")
    with pytest.raises(MessageError, match="empty"):
        xc_adapter.receive(b"", "Where?")
    other = LatentMessage(msg.keys, msg.values, msg.header | {"adapter": "0" * 16})
    with pytest.raises(MessageError, match="made for adapter.*another model pair or adapter"):
        xc_adapter.receive(other.to_bytes(), "Where?")
    fp = dict(msg.header["receiver"], config="f" * 16)
    with pytest.raises(MessageError, match="made for receiver"):
        xc_adapter.receive(LatentMessage(msg.keys, msg.values, msg.header | {"receiver": fp}).to_bytes(), "Where?")
    wide = {s: torch.cat([k, k], -1) for s, k in msg.keys.items()}
    with pytest.raises(MessageError, match="expects"):
        xc_adapter.receive(LatentMessage(wide, wide, msg.header).to_bytes(), "Where?")
    fewer = {s: k for s, k in msg.keys.items() if s != msg.layers[0]}
    with pytest.raises(MessageError, match="carries sharer layers"):
        xc_adapter.receive(LatentMessage(fewer, fewer, msg.header).to_bytes(), "Where?")
    nan = {s: torch.full_like(k, float("nan")) for s, k in msg.keys.items()}
    with pytest.raises(MessageError, match="NaN"):
        xc_adapter.receive(LatentMessage(nan, nan, msg.header).to_bytes(), "Where?")


def test_recipe_mismatches_fail_before_training(tiny_pair, xc_pair, tmp_path):  # noqa: F811
    no_comp = xc_recipe(xc_pair, tmp_path / "a")
    no_comp.write_text(no_comp.read_text().replace(XC, ""))
    with pytest.raises(RecipeError, match="cross-context data .* needs a `compressor:`"):
        train(no_comp)
    instruct = recipe(xc_pair, tmp_path / "b", extra=XC)
    with pytest.raises(RecipeError, match="has data.type='instruct_json' and a compressor"):
        train(instruct)
    long = xc_recipe(tiny_pair, tmp_path / "c")  # the tiny sharer has 256 positions (its window of 4 no longer limits)
    long.write_text(long.read_text().replace("max_context_tokens: 200", "max_context_tokens: 300"))
    with pytest.raises(RecipeError, match=r"max_context_tokens=300 exceeds .* \(256 tokens"):
        train(long)


def test_bad_contexts_and_wrong_adapter_kind(xc_adapter, tiny_pair, tmp_path):  # noqa: F811
    with pytest.raises(LCFError, match="nothing to read"):
        xc_adapter.send("   ")
    with pytest.raises(LCFError, match="tokens"):
        xc_adapter.send("The cat sat on the mat. " * 200)  # longer than the tiny sharer window
    with pytest.raises(LCFError, match="cross-context adapter"):
        xc_adapter.generate("hello")
    plain = export(train(recipe(tiny_pair, tmp_path / "runs")), tmp_path / "plain", which="last")
    shared = load_adapter(plain)
    with pytest.raises(LCFError, match="needs a cross-context adapter"):
        shared.send(CONTEXT)
    with pytest.raises(AdapterError, match="with_sharer=False only makes sense"):
        load_adapter(plain, with_sharer=False)


def test_receiver_only_process_loads_no_sharer(xc_adapter_dir, xc_adapter):
    receiver_side = load_adapter(xc_adapter_dir, with_sharer=False)
    assert receiver_side.sharer is None
    data = xc_adapter.send(CONTEXT).to_bytes()
    assert receiver_side.receive(data, "Where did the cat sit?", max_new_tokens=4) == \
        xc_adapter.receive(data, "Where did the cat sit?", max_new_tokens=4)
    with pytest.raises(LCFError, match="loaded without its sharer"):
        receiver_side.send(CONTEXT)
    with pytest.raises(AdapterError, match="only for per-token adapters"):
        load_adapter(xc_adapter_dir, with_receiver=False)


def test_cli_send_and_receive_in_two_processes(xc_adapter_dir, xc_adapter, tmp_path, capsys):
    from lcf.cli import main

    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    ctx = tmp_path / "context.txt"
    ctx.write_text(CONTEXT)
    msg = tmp_path / "msg.safetensors"
    cmd = [sys.executable, "-m", "lcf.cli"]
    assert main(["send", str(xc_adapter_dir), "--context", f"@{ctx}", "--out", str(msg), "--quantize", "int8"]) == 0
    assert f"{msg.stat().st_size} bytes (int8)" in capsys.readouterr().err  # the sender: this process
    got = subprocess.run([*cmd, "receive", str(xc_adapter_dir), str(msg), "--question", "Where did the cat sit?",
                          "--max-new-tokens", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == xc_adapter.receive(msg.read_bytes(), "Where did the cat sit?", max_new_tokens=4)
    msg.write_bytes(msg.read_bytes()[:40])  # the command's refusal, in this process (the same code as `lcf`)
    assert main(["receive", str(xc_adapter_dir), str(msg), "--question", "Where?"]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err


def test_xc_evaluation_runs_every_system(xc_adapter):
    items = [XCExample(id=str(i), sharer_context=f"The cat sat on the mat.\n\nA dog ran in the park {i}.",
                       question="Where did the cat sit?", answers=["on the mat"], receiver_context="hello world.")
             for i in range(3)]
    systems = build_xc_systems(xc_adapter, ["receiver", "own", "full", "text", "lcf-x", "int8", "zero", "mismatched"],
                               text_tokens=[3])
    names = [s.name for s in systems]
    assert names == ["receiver alone", "receiver + own half", "receiver + full context", "text-3", "lcf-x",
                     "lcf-x int8", "lcf-x (zero)", "lcf-x (mismatched)"]
    results = evaluate_xc(systems, items, max_new_tokens=3, batch_size=2, latency_runs=1)
    s = results["scores"]
    msg = xc_adapter.send(items[0].sharer_context)
    assert s["receiver alone"]["bytes_sent"] == 0 and s["lcf-x"]["bytes_sent"] == len(msg.to_bytes())
    assert s["lcf-x int8"]["bytes_sent"] == len(msg.to_bytes("int8"))
    assert 0 < s["text-3"]["bytes_sent"] < 200 and "ttft_ms" in s["lcf-x"] and "ttft_ms" not in s["lcf-x (mismatched)"]
    assert all(0 <= v["em"] <= v["f1"] <= 1 for v in s.values())
    assert len(results["predictions"]["text-3"]) == 3 and "message" in results["predictions"]["text-3"][0]
    assert "| lcf-x int8 |" in format_xc_table(results)
    again = evaluate_xc(systems, items, max_new_tokens=3, batch_size=3, latency_runs=0)
    assert {k: v["em"] for k, v in again["scores"].items()} == {k: v["em"] for k, v in s.items()}


def test_cli_eval_xc_reports_and_rejects_bad_input(xc_adapter_dir, tmp_path, capsys):
    from lcf.cli import main

    out = tmp_path / "xc"
    rc = main(["eval-xc", str(xc_adapter_dir), "--out", str(out), "--limit", "2", "--text-tokens", "3",
               "--max-new-tokens", "3", "--latency-runs", "1", "--systems", "receiver", "text", "lcf-x", "zero"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| lcf-x |" in printed and "| text-3 |" in printed and "| lcf-x (zero) |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 2 and results["selection"]["data"]["type"] == "fact_transfer"
    assert (out / "report.md").read_text().count("| lcf-x") == 2
    other = tmp_path / "other"  # items not yet looked at: those the first report did not score
    assert main(["eval-xc", str(xc_adapter_dir), "--out", str(other), "--limit", "2", "--max-new-tokens", "2",
                 "--latency-runs", "0", "--systems", "receiver", "--exclude", str(out / "results.json")]) == 0
    second = json.loads((other / "results.json").read_text())
    assert second["n"] == 2 and not set(second["item_ids"]) & set(results["item_ids"])
    assert second["selection"]["excluded"] == {"reports": ["results.json"], "items": 2}
    same = tmp_path / "same"  # exactly the items of an earlier report
    assert main(["eval-xc", str(xc_adapter_dir), "--out", str(same), "--max-new-tokens", "2", "--latency-runs", "0",
                 "--systems", "receiver", "--only", str(other / "results.json")]) == 0
    assert json.loads((same / "results.json").read_text())["item_ids"] == second["item_ids"]
    assert main(["eval-xc", str(xc_adapter_dir), "--out", str(out), "--exclude", str(tmp_path / "none.json")]) == 2
    assert "none.json does not exist" in capsys.readouterr().err
    assert main(["eval-xc", str(xc_adapter_dir), "--out", str(out), "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
    assert main(["eval-xc", str(xc_adapter_dir), "--out", str(out), "--data", "type=instruct_json",
                 "files=[x.json]"]) == 2
    assert "not a cross-context dataset" in capsys.readouterr().err


def test_demo_xc_part_prints_controls(xc_pair, tmp_path):
    import io

    from rich.console import Console

    from lcf.cli.demo_xc import run_xc_demo, xc_note

    buf = io.StringIO()
    out = run_xc_demo(str(xc_recipe(xc_pair, tmp_path / "runs")), console=Console(file=buf, width=120), limit=3)
    assert list(out["scores"]) == ["receiver alone", "lcf-x", "lcf-x (zero)", "lcf-x (mismatched)"]
    text = buf.getvalue()
    assert "3 held-out contexts" in text and "receiver + message" in text and "bytes" in text
    s = lambda c: {"contains": c, "em": c}  # noqa: E731
    helps = {"receiver alone": s(0.0), "lcf-x": s(0.7), "lcf-x (zero)": s(0.05), "lcf-x (mismatched)": s(0.1)}
    assert "70%" in xc_note(helps) and "controls at most 10%" in xc_note(helps)
    assert "does not help" in xc_note(helps | {"lcf-x (zero)": s(0.7)})


def test_old_spellings_still_work_with_a_warning(xc_adapter):
    """One release of grace for the names before `xc` became the one spelling (CONTRIBUTING.md)."""
    import lcf.data
    from lcf.cli.app import build_parser
    from lcf.data.xc.features import XCError

    with pytest.warns(DeprecationWarning, match="use Adapter.is_xc"):
        assert xc_adapter.is_cross_context is True
    with pytest.warns(DeprecationWarning, match="use lcf.data.XCError"):
        assert lcf.data.CrossContextError is XCError
    assert build_parser().parse_args(["demo", "--crosscontext", "r.yaml"]).xc == "r.yaml"
    assert build_parser().parse_args(["demo", "--xc", "r.yaml"]).xc == "r.yaml"
    assert build_parser().parse_args(["demo"]).xc == "none"
