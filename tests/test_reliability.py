"""Reliability: bad inputs and faults, one test each, naming what it tries and asserting what the user sees.

Export (target folders, concurrency, SIGKILL) and messages here; adapters, recipes, data, models,
dtypes and devices in tests/test_reliability_inputs.py; interrupted training in tests/test_resume.py;
the installed wheel in tests/test_wheel.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from lcf.atomic_folder import FolderExistsError, publish_folder
from lcf.cli import main
from lcf.errors import LCFError
from lcf.export import ADAPTER_FILES, export
from lcf.runtime import load_adapter
from lcf.runtime.messages import QUANTIZATIONS, LatentMessage, MessageError, tensor_checksum
from lcf.training.run import train
from tests.conftest import REPO
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def run_dir(tiny_pair, tmp_path_factory):  # noqa: F811
    return train(recipe(tiny_pair, tmp_path_factory.mktemp("rel") / "runs"), ["trainer.max_steps=2"])


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def snapshot(adapter: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in adapter.iterdir()}


# -- export: what may be replaced ----------------------------------------------------------------
def test_export_refuses_a_folder_of_user_files_and_keeps_them(run_dir, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FolderExistsError, match=r"not an lcf adapter \(it holds notes.txt\).*--overwrite"):
        export(run_dir, target)
    assert (target / "notes.txt").read_text() == "keep me" and listing(tmp_path) == ["mine"]


def test_export_refuses_an_adapter_folder_with_extra_user_files(run_dir, tmp_path):
    out = export(run_dir, tmp_path / "a")
    (out / "eval.csv").write_text("mine")
    with pytest.raises(FolderExistsError, match="eval.csv"):
        export(run_dir, out)
    assert (out / "eval.csv").exists()


def test_export_refuses_a_file_path_unless_overwrite(run_dir, tmp_path):
    target = tmp_path / "adapter"
    target.write_text("a file")
    with pytest.raises(FolderExistsError, match="exists and is a file"):
        export(run_dir, target)
    assert target.read_text() == "a file"
    export(run_dir, target, overwrite=True)
    assert {"adapter.safetensors", "adapter_config.json"} <= set(listing(target)) and listing(tmp_path) == ["adapter"]


def test_export_replaces_an_existing_adapter_without_debris(run_dir, tmp_path):
    first = export(run_dir, tmp_path / "a", which="last")
    before = json.loads((first / "adapter_config.json").read_text())["training"]["checkpoint"]
    export(run_dir, tmp_path / "a", which="best")
    after = json.loads((first / "adapter_config.json").read_text())["training"]["checkpoint"]
    assert before == "last.ckpt" and after != before and listing(tmp_path) == ["a"]


def test_export_refuses_a_target_that_holds_the_checkpoint(run_dir):
    with pytest.raises(LCFError, match="holds the checkpoint"):
        export(run_dir, run_dir, overwrite=True)
    assert (run_dir / "ckpt" / "last.ckpt").exists()


def test_cli_export_into_user_folder_is_one_line_and_exit_2(run_dir, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "data.bin").write_bytes(b"1")
    assert main(["export", str(run_dir), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["export", str(run_dir), str(tmp_path / "x"), "--overwrite"]) == 0
    assert not (tmp_path / "x" / "data.bin").exists()


# -- export: concurrency and kills ---------------------------------------------------------------
def test_concurrent_exports_never_hide_the_folder_or_leave_debris(tmp_path):
    out = tmp_path / "a"

    def publish(i):
        with publish_folder(out, ADAPTER_FILES) as tmp:  # what write_adapter does around its files
            (tmp / "adapter.safetensors").write_bytes(bytes(1000) * (i + 1))
            (tmp / "adapter_config.json").write_text(json.dumps({"writer": i}))

    publish(9)
    missing, stop, errors = [], threading.Event(), []

    def reader():
        while not stop.is_set():
            if not (out / "adapter_config.json").is_file():
                missing.append(1)

    def writer(i):
        try:
            for _ in range(30):
                publish(i)
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert not errors and not missing and listing(tmp_path) == ["a"]
    writer_id = json.loads((out / "adapter_config.json").read_text())["writer"]
    assert writer_id in (0, 1, 2) and (out / "adapter.safetensors").stat().st_size == 1000 * (writer_id + 1)


KILL_DURING_EXPORT = """
import os, signal, sys
import lcf.atomic_folder as af
import lcf.export as ex
where = sys.argv[3]
if where == "writing":   # killed while the new tensors are being written
    save = ex.save_file
    ex.save_file = lambda *a, **k: (save(*a, **k), os.kill(os.getpid(), signal.SIGKILL))
else:                    # killed after the swap, before the old contents are removed
    af._exchange_then = af._exchange
    af._exchange = lambda a, b: (af._exchange_then(a, b), os.kill(os.getpid(), signal.SIGKILL))[0]
ex.export(sys.argv[1], sys.argv[2], which="last")
"""


@pytest.mark.parametrize("where", ["writing", "swapped"])
def test_sigkill_during_export_keeps_a_whole_adapter_and_the_next_export_cleans_up(run_dir, tmp_path, where):
    out = export(run_dir, tmp_path / "adapter", which="best")
    old = snapshot(out)
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_EXPORT, str(run_dir), str(out), where], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = [p for p in listing(tmp_path) if p != "adapter"]
    assert len(left) == 1 and left[0].startswith(".adapter.lcf-")  # the killed writer's temporary folder
    if where == "writing":
        assert snapshot(out) == old  # the previous adapter, untouched
    else:
        assert json.loads((out / "adapter_config.json").read_text())["training"]["checkpoint"] == "last.ckpt"
    load_adapter(out)  # whole either way
    export(run_dir, out, which="last")
    assert listing(tmp_path) == ["adapter"]  # the dead writer's folder was removed


# -- latent messages -----------------------------------------------------------------------------
def message() -> LatentMessage:
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, 1, 4, generator=g), torch.randn(2, 1, 4, generator=g)
    return LatentMessage({0: k}, {0: v}, {"sharer": "s", "receiver": "r", "adapter": "a"})


def tensor_offset(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


@pytest.mark.parametrize("quantize", QUANTIZATIONS)
def test_message_with_a_changed_tensor_byte_is_refused(quantize):
    data = bytearray(message().to_bytes(quantize=quantize))
    assert LatentMessage.from_bytes(bytes(data)).header["checksum"].startswith("sha256:")
    data[tensor_offset(data) + 3] ^= 0x01  # one bit of the tensor data, header untouched
    with pytest.raises(MessageError, match="do not match the checksum.*altered or damaged.*send it again"):
        LatentMessage.from_bytes(bytes(data))


def rewrite_header(data: bytes, **changes) -> bytes:
    from safetensors.torch import load, save

    tensors = load(data)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(json.loads(data[8:8 + n])["__metadata__"]["lcf_message"]) | changes
    header = {k: v for k, v in header.items() if v is not None}
    return save(tensors, metadata={"lcf_message": json.dumps(header)})


def test_message_with_an_unknown_quantization_label_is_refused():
    data = rewrite_header(message().to_bytes(), quantization="int3")
    with pytest.raises(MessageError, match=r"quantization 'int3' is not one of none, int8"):
        LatentMessage.from_bytes(data)


def test_message_without_checksum_is_refused():
    data = rewrite_header(message().to_bytes(), checksum=None)
    with pytest.raises(MessageError, match="no checksum"):
        LatentMessage.from_bytes(data)


def test_message_whose_tensors_were_replaced_consistently_still_fails_the_header_checksum():
    from safetensors.torch import load

    original = message().to_bytes()
    tensors = load(original)
    tensors["k.0"] = tensors["k.0"] * 2  # a re-saved message with other values but the old header
    n = int.from_bytes(original[:8], "little")
    header = json.loads(json.loads(original[8:8 + n])["__metadata__"]["lcf_message"])
    assert header["checksum"] != tensor_checksum(tensors)
    from safetensors.torch import save

    with pytest.raises(MessageError, match="checksum"):
        LatentMessage.from_bytes(save(tensors, metadata={"lcf_message": json.dumps(header)}))
