"""Reliability, round two (issue 33): each failure fed as a user would, asserting the one-line error (or
the refusal) and that nothing was lost. The sweep of further bad inputs is in tests/test_reliability_sweep.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lcf.cli import main
from lcf.config import load_recipe, validate_recipe
from lcf.errors import RecipeError
from lcf.export import export
from lcf.guards import NonFiniteError
from lcf.paths import OutputPathError
from lcf.run_lock import LOCK_NAME, RunFolderBusyError
from lcf.runtime import AdapterError, load_adapter
from lcf.runtime.limits import LengthError
from lcf.training.module import NonFiniteLossError
from lcf.training.run import train
from tests.conftest import REPO
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def run_dir(tiny_pair, tmp_path_factory):  # noqa: F811
    return train(recipe(tiny_pair, tmp_path_factory.mktemp("r2") / "runs"), ["trainer.max_steps=2"])


@pytest.fixture(scope="module")
def adapter_dir(run_dir, tmp_path_factory):
    return export(run_dir, tmp_path_factory.mktemp("r2a") / "adapter", which="last")


@pytest.fixture(scope="module")
def adapter(adapter_dir):
    return load_adapter(adapter_dir)


def error_line(stderr: str) -> str:
    """The one ``error:`` line of a command's stderr (model-loading progress bars aside), no traceback."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def one_line_error(capsys) -> str:
    return error_line(capsys.readouterr().err)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def copy_adapter(adapter_dir: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(adapter_dir, tmp_path / name))


def edit_config(folder: Path, edit) -> Path:
    cfg = json.loads((folder / "adapter_config.json").read_text())
    edit(cfg)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


# -- 1. two trainings of one run folder --------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from lcf.run_lock import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_training_of_a_busy_run_folder_is_refused_with_the_owner_pid(tiny_pair, tmp_path):  # noqa: F811
    path = recipe(tiny_pair, tmp_path / "runs")
    folder = tmp_path / "runs" / "tiny"
    owner = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert owner.stdout.readline().strip() == "locked"
        busy = rf"in use by another training \(pid {owner.pid} .*another name.*--resume"
        with pytest.raises(RunFolderBusyError, match=busy):
            train(path, ["trainer.max_steps=2"])
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing of the refused run was written
    finally:
        owner.kill()
        owner.wait()
    assert (train(path, ["trainer.max_steps=1"]) / "ckpt" / "last.ckpt").exists()  # free once the owner is gone


def test_the_lora_control_locks_its_run_folder_too(tiny_pair, tmp_path):  # noqa: F811
    from lcf.training.lora import train_lora

    path = recipe(tiny_pair, tmp_path / "runs")
    folder = tmp_path / "runs" / "tiny-lora"
    owner = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert owner.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusyError, match=rf"pid {owner.pid}"):
            train_lora(path, ["trainer.max_steps=1"])
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]
    finally:
        owner.kill()
        owner.wait()


# -- 2. non-finite numbers ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_lr_is_refused_by_validation(tmp_path, value, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(f"""
        sharer: gemma3-270m
        receiver: smollm2-135m-instruct
        translator: {{type: lcf_lowrank, rank: 8}}
        trainer: {{lr: {value}}}
    """))
    with pytest.raises(RecipeError, match=r"trainer\.lr.*NaN or infinite values are not allowed"):
        validate_recipe(load_recipe(path))
    assert main(["validate", str(path)]) == 1 and "trainer.lr" in capsys.readouterr().err


def test_training_stops_at_the_first_non_finite_parameter_and_keeps_the_last_finite_checkpoint(
        tiny_pair, tmp_path, monkeypatch):  # noqa: F811
    step, calls = torch.optim.AdamW.step, []

    def poisoned(self, closure=None):
        out = step(self, closure)
        calls.append(1)
        if len(calls) == 3:  # the third optimizer step diverges
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    path = recipe(tiny_pair, tmp_path / "runs")
    stopped = r"NaN or infinite at global step 3 .*not saved\. Last good checkpoint: .*last\.ckpt"
    with pytest.raises(NonFiniteLossError, match=stopped):
        train(path, ["trainer.max_steps=5", "trainer.checkpoint_every_n_steps=1"])
    run = tmp_path / "runs" / "tiny"
    for ckpt in (run / "ckpt").glob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert state["global_step"] <= 2
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())
    monkeypatch.undo()
    load_adapter(export(run, tmp_path / "adapter", which="last"))  # the kept checkpoint is usable


def nan_checkpoint(run_dir: Path, tmp_path: Path) -> Path:
    state = torch.load(run_dir / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    key = next(k for k in state["state_dict"] if k.startswith("communicator.translators.0."))
    state["state_dict"][key] = torch.full_like(state["state_dict"][key], float("inf"))
    run = tmp_path / "diverged"
    (run / "ckpt").mkdir(parents=True)
    shutil.copy(run_dir / "recipe.yaml", run / "recipe.yaml")
    torch.save(state, run / "ckpt" / "last.ckpt")
    return run


def test_export_of_a_non_finite_checkpoint_is_refused_naming_the_tensor(run_dir, adapter_dir, tmp_path, capsys):
    run = nan_checkpoint(run_dir, tmp_path)
    out = copy_adapter(adapter_dir, tmp_path, "adapter")
    before = snapshot(out)
    with pytest.raises(NonFiniteError, match=r"last\.ckpt: 1 tensor\(s\) hold NaN or infinite values "
                                             r"\(communicator\.translators\.0\..*export an earlier checkpoint"):
        export(run, out, which="last")
    assert main(["export", str(run), str(out), "--which", "last"]) == 2
    assert "NaN or infinite" in one_line_error(capsys)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "diverged"]


def test_load_adapter_refuses_non_finite_tensors_naming_them(adapter_dir, tmp_path):
    bad = copy_adapter(adapter_dir, tmp_path)
    tensors = load_file(bad / "adapter.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, bad / "adapter.safetensors")
    with pytest.raises(AdapterError, match=rf"1 tensor\(s\) hold NaN or infinite values \({name}\).*diverged"):
        load_adapter(bad)


def test_card_writer_refuses_nan_gates_and_nan_scores(adapter_dir, tmp_path):
    from lcf.export_card import adapter_card, write_scores

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    with pytest.raises(NonFiniteError, match=r"adapter card: gates\[0\]\.min is NaN"):
        adapter_card(cfg, gates=[{"layers": 1, "min": float("nan"), "max": 0.5}])
    folder = copy_adapter(adapter_dir, tmp_path)
    card = (folder / "README.md").read_text()
    with pytest.raises(NonFiniteError, match=r"tasks\.arc\.adapter is NaN"):
        write_scores(folder, {"tasks": {"arc": {"adapter": float("nan")}}, "headline": {}})
    assert (folder / "README.md").read_text() == card


# -- 3. lengths --------------------------------------------------------------------------------------
def long_prompt(n: int = 400) -> str:
    return " ".join(["word"] * n)  # the tiny models attend to 256 positions


def no_compute(monkeypatch, *models) -> None:
    def refuse(*a, **k):
        raise AssertionError("a model ran although the prompt was too long")

    for m in models:
        monkeypatch.setattr(m, "forward", refuse)


def test_generate_and_generation_inputs_refuse_a_prompt_longer_than_the_receiver_window(adapter, monkeypatch):
    no_compute(monkeypatch, adapter.receiver.model, adapter.sharer.model)
    for call in (lambda: adapter.generate(long_prompt(), max_new_tokens=2),
                 lambda: adapter.generation_inputs(long_prompt())):
        with pytest.raises(LengthError, match=r"receiver prompt 0 has \d+ tokens.*more than the 256 positions .* "
                                              r"attends to .*nothing was computed.*truncate_text"):
            call()


def test_cli_eval_style_system_refuses_long_items_before_scoring(adapter, monkeypatch):
    from lcf.eval.systems import PlainModel

    system = PlainModel(adapter.receiver)
    no_compute(monkeypatch, adapter.receiver.model)
    with pytest.raises(LengthError, match=r"prompt of item 1 \(prompt_ids\).*Leave such items out"):
        system.score_options(["short", long_prompt()], [[" a", " b"], [" a", " b"]])
    with pytest.raises(LengthError, match="item 0"):
        system.generate([long_prompt()], max_new_tokens=4)


# -- 4. file-system faults ---------------------------------------------------------------------------
def deny_writes_into(monkeypatch, folder: Path) -> None:
    real = os.access

    def access(path, mode, *a, **k):
        if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)


def test_export_into_a_read_only_folder_is_one_line_before_any_model(run_dir, tmp_path, monkeypatch, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    deny_writes_into(monkeypatch, parent)
    monkeypatch.setattr("lcf.pair.build_pair", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["export", str(run_dir), str(parent / "adapter")]) == 2
    err = one_line_error(capsys)
    assert f"cannot write into {parent}" in err and "choose a folder you can write to" in err
    assert list(parent.iterdir()) == []


def test_training_into_a_read_only_folder_is_refused_before_any_model(tiny_pair, tmp_path, monkeypatch):  # noqa: F811
    path = recipe(tiny_pair, tmp_path / "runs")
    deny_writes_into(monkeypatch, tmp_path / "runs")
    monkeypatch.setattr("lcf.training.run.build_pair", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(OutputPathError, match=r"run folder .*cannot write into .*runs"):
        train(path)
    assert not (tmp_path / "runs" / "tiny").exists()


def test_export_beyond_the_file_size_limit_is_refused_and_the_old_adapter_stays(run_dir, adapter_dir, tmp_path):
    out = copy_adapter(adapter_dir, tmp_path, "adapter")
    before = snapshot(out)
    code = ("import resource, sys\nfrom lcf.cli import main\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            "sys.exit(main(['export', sys.argv[1], sys.argv[2], '--which', 'last']))")
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir), str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "ulimit -f" in error_line(proc.stderr)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_full_disk_while_writing_the_tensors_is_one_line_and_leaves_nothing(run_dir, adapter_dir, tmp_path,
                                                                            monkeypatch, capsys):
    from safetensors import SafetensorError

    out = copy_adapter(adapter_dir, tmp_path, "adapter")
    before = snapshot(out)

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise SafetensorError("Error while serializing: IoError(Os { code: 27, kind: FileTooLarge })")

    monkeypatch.setattr("lcf.export.save_file", full)
    assert main(["export", str(run_dir), str(out), "--which", "last"]) == 2
    assert "writing the adapter" in one_line_error(capsys)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_export_onto_a_symlink_loop_is_one_line(run_dir, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert main(["export", str(run_dir), str(loop)]) == 2
    assert "symbolic-link loop" in one_line_error(capsys) and loop.is_symlink()


def test_receive_of_a_missing_message_file_is_one_line(adapter_dir, tmp_path, capsys):
    assert main(["receive", str(adapter_dir), str(tmp_path / "nope.msg"), "--question", "q"]) == 2
    assert "nope.msg does not exist" in one_line_error(capsys)


def test_any_os_error_of_a_command_is_one_line_naming_the_path(run_dir, tmp_path, monkeypatch, capsys):
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x" / "recipe.yaml"))

    monkeypatch.setattr("lcf.export.export", denied)
    assert main(["export", str(run_dir), str(tmp_path / "x")]) == 2
    err = one_line_error(capsys)
    assert "x/recipe.yaml: Permission denied (PermissionError); choose a folder you can write to" in err


# -- 5. and 6. adapter configs -----------------------------------------------------------------------
def test_adapter_config_of_random_bytes_is_one_adapter_error_and_list_goes_on(adapter_dir, tmp_path, capsys):
    root = tmp_path / "adapters"
    copy_adapter(adapter_dir, root, "good")
    bad = copy_adapter(adapter_dir, root, "bad")
    (bad / "adapter_config.json").write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(AdapterError, match=r"bad/adapter_config\.json is not UTF-8 text.*re-export"):
        load_adapter(bad)
    assert main(["list", "--adapters", str(root)]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "bad" in out and "unreadable" in out


@pytest.mark.parametrize("edit, key", [
    (lambda c: c["shapes"]["sharer"][0].update(head_dim="64"), r"shapes\.sharer\[0\]\.head_dim must be a positive "
                                                               r"integer, got str '64'"),
    (lambda c: c["translator"]["args"].update(bogus=1), r"translator\.args\.bogus: .* has no argument 'bogus'"),
    (lambda c: c["translator"]["args"].update(rank="8"), r"translator\.args\.rank: expected int, got str"),
])
def test_ill_typed_adapter_config_names_the_file_and_key(adapter_dir, tmp_path, edit, key):
    bad = edit_config(copy_adapter(adapter_dir, tmp_path), edit)
    with pytest.raises(AdapterError, match=rf"copy/adapter_config\.json: {key}.*re-export"):
        load_adapter(bad)


# -- leftovers ---------------------------------------------------------------------------------------
def test_generation_inputs_refuse_a_non_finite_sharer_cache(adapter_dir):
    adapter = load_adapter(adapter_dir)
    with torch.no_grad():
        adapter.sharer.model.get_input_embeddings().weight.fill_(float("inf"))
    with pytest.raises(AdapterError, match="sharer 0's KV cache holds NaN or infinite values"):
        adapter.generation_inputs("What is 1 + 1?")
    assert adapter.generation_inputs("What is 1 + 1?", fuse=False)["input_ids"].shape[0] == 1


def test_several_sharer_config_entry_without_a_required_key_is_named(adapter_dir, tmp_path):
    def two_sharers(cfg):
        entry = {k: cfg[k] for k in ("translator", "shapes", "sharer")}
        cfg["sharers"] = [entry, {k: v for k, v in entry.items() if k != "shapes"}]

    bad = edit_config(copy_adapter(adapter_dir, tmp_path), two_sharers)
    with pytest.raises(AdapterError, match=r"required key 'sharers\[1\]\.shapes' is missing.*re-export"):
        load_adapter(bad)


class FakeGroup:
    """Two ranks of a process group, seen from ``rank``; all_gather_object returns ``states``."""

    def __init__(self, rank: int, states: list | None = None):
        self.rank, self.states = rank, states

    def get_rank(self) -> int:
        return self.rank

    def get_world_size(self) -> int:
        return 2

    def all_gather_object(self, out: list, obj) -> None:
        out[:] = self.states if self.states is not None else [obj, obj]


def test_resume_under_ddp_restores_each_rank_its_own_rng_state(monkeypatch):
    import lcf.training.resume as resume

    callback = resume.RNGState()
    torch.manual_seed(1)
    rank0 = callback.local_state()
    torch.manual_seed(2)
    rank1 = callback.local_state()
    monkeypatch.setattr(resume, "_process_group", lambda: FakeGroup(0, [rank0, rank1]))
    saved = callback.state_dict()
    assert len(saved["ranks"]) == 2 and torch.equal(saved["torch"], rank0["torch"])
    monkeypatch.setattr(resume, "_process_group", lambda: FakeGroup(1))
    torch.manual_seed(3)
    callback.load_state_dict(saved)
    assert torch.equal(torch.get_rng_state(), rank1["torch"])  # rank 1 got its own state, not rank 0's
