"""Reliability, round two: the cross-context side of issue 33 (send, receive, eval-xc) and a sweep of
further bad inputs and faults, each asserting the one-line error (or the refusal) and that nothing was lost."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lcf.cli import main
from lcf.config import load_recipe, validate_recipe
from lcf.data.xc.features import ContextTooLongError
from lcf.errors import RecipeError
from lcf.paths import OutputPathError, check_free_space, check_output_path, os_error_line, write_bytes_whole
from lcf.run_lock import RunFolderBusyError, run_folder_lock
from lcf.runtime import AdapterError, load_adapter
from lcf.runtime.limits import LengthError, truncate_text
from tests.conftest import REPO
from tests.test_xc_e2e import xc_adapter, xc_adapter_dir, xc_pair  # noqa: F401  (fixtures)
from tests.test_reliability_round2 import (HOLD_LOCK, adapter, adapter_dir, copy_adapter, edit_config,  # noqa: F401
                                           long_prompt, no_compute, one_line_error, run_dir, snapshot)
from tests.test_train_export import tiny_pair  # noqa: F401  (fixture: run_dir trains on it)


# -- issue 33, cross-context side: lengths and the sending side's finite check -------------------------
def test_receive_refuses_a_question_longer_than_the_receiver_window(xc_adapter, monkeypatch):  # noqa: F811
    message = xc_adapter.send("The cat sat on the mat.").to_bytes()
    no_compute(monkeypatch, xc_adapter.receiver.model)
    with pytest.raises(LengthError, match=r"receiver prompt 0 has \d+ tokens \+ 8 new tokens.*256 positions"):
        xc_adapter.receive(message, long_prompt(), max_new_tokens=8)


def test_send_refuses_a_context_longer_than_the_sharer_reads(xc_adapter, monkeypatch):  # noqa: F811
    no_compute(monkeypatch, xc_adapter.sharer.model)
    with pytest.raises(ContextTooLongError, match=r"more than the limit max_tokens=\d+.*shorter context"):
        xc_adapter.send(long_prompt())


def test_send_refuses_a_non_finite_summary(xc_adapter_dir):  # noqa: F811
    sender = load_adapter(xc_adapter_dir)
    with torch.no_grad():
        sender.sharer.model.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(AdapterError, match="sharer 0's KV cache holds NaN or infinite values"):
        sender.send("The cat sat on the mat.")


def test_eval_xc_refuses_an_item_too_long_for_the_receiver_before_any_compute(xc_adapter, monkeypatch):  # noqa: F811
    from lcf.cli.commands import _check_xc_lengths

    item = SimpleNamespace(id="x1", question="Where?", receiver_context="", sharer_context=long_prompt())
    no_compute(monkeypatch, xc_adapter.receiver.model, xc_adapter.sharer.model)
    _check_xc_lengths(xc_adapter, [item], ["receiver", "lcf-x"], 16)  # the receiver never reads the sharer's half
    with pytest.raises(LengthError, match=r"Item 0 \(x1\) is too long.*drop the 'full' system"):
        _check_xc_lengths(xc_adapter, [item], ["receiver", "full"], 16)


# -- sweep -------------------------------------------------------------------------------------------
def recipe_text(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent("""
        sharer: gemma3-270m
        receiver: smollm2-135m-instruct
        translator: {type: lcf_lowrank, rank: 8}
    """) + extra)
    return path


@pytest.mark.parametrize("extra, key", [("trainer: {grad_clip: .inf}\n", "trainer.grad_clip"),   # sweep 1
                                        ("trainer: {weight_decay: -.inf}\n", "trainer.weight_decay"),  # sweep 2
                                        ("data: {type: instruct_json, files: [d.json], weight: .nan}\n",  # sweep 3
                                         "data.weight")])
def test_sweep_any_non_finite_recipe_float_is_named(tmp_path, extra, key):
    with pytest.raises(RecipeError, match=rf"{key}.*NaN or infinite"):
        validate_recipe(load_recipe(recipe_text(tmp_path, extra)))


def test_sweep_resume_into_a_busy_run_folder_is_refused_too(tmp_path):  # sweep 4
    folder = tmp_path / "busy"
    with run_folder_lock(folder):
        with pytest.raises(RunFolderBusyError, match=f"pid {os.getpid()}.*continue it with --resume once"):
            with run_folder_lock(folder, resume=True):
                pass
    with run_folder_lock(folder):  # released when the block ends
        pass


def test_sweep_a_killed_owner_releases_the_run_folder(tmp_path):  # sweep 5
    owner = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "locked"
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    with run_folder_lock(tmp_path / "run") as lock:
        assert f"pid {os.getpid()}" in lock.read_text()


def test_sweep_export_under_a_path_whose_parent_is_a_file(run_dir, tmp_path, capsys):  # sweep 6
    (tmp_path / "file").write_text("mine")
    assert main(["export", str(run_dir), str(tmp_path / "file" / "adapter")]) == 2
    assert "is a file, not a folder" in one_line_error(capsys) and (tmp_path / "file").read_text() == "mine"


def test_sweep_export_through_a_looping_parent_is_one_line(run_dir, tmp_path, capsys):  # sweep 7
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert main(["export", str(run_dir), str(tmp_path / "a" / "adapter")]) == 2
    assert "symbolic-link loop" in one_line_error(capsys)


def test_sweep_send_out_into_a_missing_folder_is_refused_before_any_model(tmp_path, capsys):  # sweep 8
    (tmp_path / "f").write_text("x")
    assert main(["send", str(tmp_path / "no-adapter"), "--context", "hi", "--out", str(tmp_path / "f" / "m")]) == 2
    assert "is a file, not a folder" in one_line_error(capsys)


def test_sweep_eval_out_on_a_symlink_loop_is_refused_before_any_task_or_model(tmp_path, capsys):  # sweep 9
    (tmp_path / "out").symlink_to(tmp_path / "out")
    assert main(["eval", "--pair", "nope", "--tasks", "arc_easy", "--out", str(tmp_path / "out")]) == 2
    assert "symbolic-link loop" in one_line_error(capsys)


def test_sweep_a_failed_whole_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):  # sweep 10
    target = tmp_path / "msg.bin"
    target.write_bytes(b"old")

    def no_rename(a, b):
        raise OSError(errno.ENOSPC, "No space left on device", str(b))

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="No space"):
        write_bytes_whole(target, b"new" * 100)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["msg.bin"]


def test_sweep_not_enough_free_space_is_refused_with_the_sizes(tmp_path):  # sweep 11
    with pytest.raises(OutputPathError, match=r"needs .* but its disk has .* free"):
        check_free_space(tmp_path, 1 << 62, "export target x")


def test_sweep_os_error_lines_name_path_and_fix():  # sweep 12
    line = os_error_line(OSError(errno.ENOSPC, "No space left on device", "/data/out/adapter.safetensors"))
    assert line.startswith("/data/out/adapter.safetensors: No space left on device") and "free space" in line
    assert "ulimit -f" in os_error_line(OSError(errno.EFBIG, "File too large", "/x"))


@pytest.mark.parametrize("edit, key", [
    (lambda c: c["translator"].update(args=[1, 2]), r"translator\.args must be a JSON object, got list"),  # 13
    (lambda c: c["shapes"]["layer_map"]["sharer_of"].__setitem__(0, "1"),  # 14
     r"shapes\.layer_map\.sharer_of\[0\] must be an integer or null, got str"),
    (lambda c: c["shapes"]["receiver"][0].update(kv_heads=0),  # 15
     r"shapes\.receiver\[0\]\.kv_heads must be a positive"),
    (lambda c: c["translator"].update(type="lcf_lowrnak"), r"translator\.type: .*Did you mean 'lcf_lowrank'"),  # 16
    (lambda c: c.update(sharers=[c["translator"], 3]), r"required key 'sharers\[0\]\.translator' is missing"),  # 17
])
def test_sweep_more_ill_typed_adapter_configs(adapter_dir, tmp_path, edit, key):
    bad = edit_config(copy_adapter(adapter_dir, tmp_path), edit)
    with pytest.raises(AdapterError, match=rf"adapter_config\.json: .*{key}"):
        load_adapter(bad)


def test_sweep_config_with_a_byte_order_mark_is_an_adapter_error(adapter_dir, tmp_path):  # sweep 18
    bad = copy_adapter(adapter_dir, tmp_path)
    (bad / "adapter_config.json").write_bytes(b"\xef\xbb\xbf" + (bad / "adapter_config.json").read_bytes())
    with pytest.raises(AdapterError, match="not valid JSON.*re-export"):
        load_adapter(bad)


def test_sweep_list_marks_a_json_list_config_and_goes_on(adapter_dir, tmp_path, capsys):  # sweep 19
    root = tmp_path / "adapters"
    copy_adapter(adapter_dir, root, "good")
    (copy_adapter(adapter_dir, root, "listed") / "adapter_config.json").write_text("[1]")
    assert main(["list", "--adapters", str(root)]) == 0
    out = capsys.readouterr().out
    assert "unreadable" in out and "good" in out


def test_sweep_prompt_that_fits_but_not_with_its_answer_names_max_new_tokens(adapter, monkeypatch):  # sweep 20
    n = len(adapter.encode([long_prompt(50)])["receiver_prompt_ids"][0])
    assert n < 256
    no_compute(monkeypatch, adapter.receiver.model, adapter.sharer.model)
    with pytest.raises(LengthError, match=rf"{n} tokens \+ {257 - n} new tokens.*lower max_new_tokens"):
        adapter.generate(long_prompt(50), max_new_tokens=257 - n)


def test_sweep_truncate_text_is_the_way_out(adapter):  # sweep 21
    text = truncate_text(adapter.receiver.tokenizer, long_prompt(), 100)
    assert len(adapter.receiver.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 100
    assert isinstance(adapter.generate(text, max_new_tokens=2), str)


def test_sweep_infinite_tensor_in_an_adapter_is_refused(adapter_dir, tmp_path):  # sweep 22
    from safetensors.torch import load_file, save_file

    bad = copy_adapter(adapter_dir, tmp_path)
    tensors = load_file(bad / "adapter.safetensors")
    name = sorted(tensors)[-1]
    tensors[name].view(-1)[0] = float("-inf")
    save_file(tensors, bad / "adapter.safetensors")
    with pytest.raises(AdapterError, match=rf"\({name}\)"):
        load_adapter(bad)


def test_sweep_receive_with_a_missing_question_file_loads_no_model(tmp_path, capsys):  # sweep 23
    (tmp_path / "m").write_bytes(b"x")
    question = "@" + str(tmp_path / "q")
    assert main(["receive", str(tmp_path / "no-adapter"), str(tmp_path / "m"), "--question", question]) == 2
    assert "q does not exist" in one_line_error(capsys)


def test_sweep_resume_with_another_world_size_falls_back_to_rank_0(monkeypatch):  # sweep 24
    import lcf.training.resume as resume

    class Three:
        def get_rank(self):
            return 2

        def get_world_size(self):
            return 3

    callback = resume.RNGState()
    torch.manual_seed(5)
    state = callback.local_state()
    monkeypatch.setattr(resume, "_process_group", lambda: Three())
    torch.manual_seed(6)
    callback.load_state_dict(state | {"ranks": [state, state]})
    assert torch.equal(torch.get_rng_state(), state["torch"])


def test_sweep_output_check_creates_nothing(tmp_path):  # sweep 25
    check_output_path(tmp_path / "a" / "b" / "c", "report folder")
    assert list(tmp_path.iterdir()) == []


# sweep 26 (a DDP checkpoint holds each rank its own RNG state) is checked on the DDP run of
# tests/test_distributed.py::test_ddp_two_processes_on_cpu, which writes such a checkpoint anyway

