"""The wheel: built from the project and installed (not editable) into fresh venvs offline.

- With every dependency of this environment, it finds its model/pair cards and shipped recipes from any
  directory (``lcf list``, ``lcf validate``).
- With its runtime dependencies only (``pip install lcf``: no extra), it loads exported adapters, shared-context
  and per-token, and generates, sends and receives, through the API and the CLI; a training command names the
  extra it needs. That venv holds the dependency closure of the wheel's own ``Requires-Dist`` (no extras),
  linked from this environment's site-packages, and pip installs the wheel there without ``--no-deps`` and
  without an index: it would fail if the wheel needed anything else.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCES = ("lcf", "registry", "recipes", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
#: packages only an extra installs: none may be importable in the runtime-only venv
EXTRA_ONLY = ("lightning", "pytorch_lightning", "deepspeed", "omegaconf", "peft", "torchmetrics", "matplotlib",
              "gguf", "accelerate")
#: packages the runtime must not import: those, and rich (installed anyway: transformers -> typer -> rich)
NOT_IMPORTED = (*EXTRA_ONLY, "rich")


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The lcf wheel, built from a clean copy of the sources (no build/ or egg-info in the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp / "dist"), "-q"], cwd=tmp)
    return next((tmp / "dist").glob("lcf-*.whl"))


def new_venv(folder: Path) -> tuple[Path, Path]:
    """A fresh venv without pip or system site-packages: (its python, its site-packages folder)."""
    run([sys.executable, "-m", "venv", "--without-pip", str(folder)], cwd=folder.parent)
    py = folder / "bin" / "python"
    purelib = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=folder.parent)
    return py, Path(purelib.stdout.strip())


def pip_install(py: Path, *args: str) -> None:
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-index", "-q", *args], cwd=py.parent)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A venv holding only the lcf wheel; its dependencies come from this interpreter's site-packages."""
    py, purelib = new_venv(tmp_path_factory.mktemp("full") / "venv")
    # reuse the installed dependencies (no index): their folders go on the venv's path after its own
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip_install(py, "--no-deps", str(wheel))
    return py.parent.parent


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("LCF_REGISTRY_PATH", "PYTHONPATH")}
    return e | {"HF_HUB_OFFLINE": "1"}


def test_wheel_contains_cards_and_recipes(installed, tmp_path):
    py = installed / "bin" / "python"
    code = ("import lcf, lcf.cards as c, lcf.shipped as s; print(lcf.__file__); print(c.BUILTIN_REGISTRY); "
            "print(s.find_recipe('recipes/quickstart.yaml'))")
    lines = run([str(py), "-c", code], cwd=tmp_path, env=env()).stdout.split()
    assert all(str(installed) in line for line in lines), lines  # the wheel's files, not the checkout's
    assert lines[1].endswith("lcf/_shipped/registry") and lines[2].endswith("lcf/_shipped/recipes/quickstart.yaml")


def test_installed_lcf_lists_cards_and_validates_recipes_from_another_directory(installed, tmp_path):
    lcf = str(installed / "bin" / "lcf")
    out = run([lcf, "list"], cwd=tmp_path, env=env()).stdout
    assert "gemma3-270m" in out and "smollm2-135m-instruct" in out and "gemma3-to-smollm2" in out
    out = run([lcf, "validate", "recipes/quickstart.yaml", "recipes/c2c.yaml", "crosscontext.yaml"], cwd=tmp_path,
              env=env()).stdout
    assert out.count("ok ") == 3


# -- the runtime alone: `pip install lcf` without extras ------------------------------------------------
PROMPT, CONTEXT, QUESTION = "What is 2 + 3?", "The cat sat on the mat. The dog ran in the park.", "Where did the dog run?"
NEW_TOKENS = 6
RUNTIME_SCRIPT = """
import contextlib, io, json, sys
import torch
torch.set_num_threads(1)
from lcf.runtime import load_adapter
root, prompt, context, question, new = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
shared = load_adapter(root + "/shared")  # the models named in the adapter (local folders)
per_token = load_adapter(root + "/per_token")
message = per_token.send(context).to_bytes()
out = {"shared": shared.generate(prompt, max_new_tokens=new),
       "composed": load_adapter(root + "/composed").generate(prompt, max_new_tokens=new),  # its LoRA without PEFT
       "per_token": per_token.receive(message, question, max_new_tokens=new), "modules": sorted(sys.modules)}
from lcf.cli import main
assert main(["send", root + "/per_token", "--context", context, "--out", root + "/message.bin"]) == 0
with contextlib.redirect_stdout(io.StringIO()) as printed:
    assert main(["receive", root + "/per_token", root + "/message.bin", "--question", question,
                 "--max-new-tokens", str(new)]) == 0
out["cli_receive"] = printed.getvalue().strip()
print(json.dumps(out))
"""


def runtime_requirements(wheel: Path) -> list[str]:
    """The wheel's ``Requires-Dist`` entries without an extra: what ``pip install lcf`` installs."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    requirements = [line.partition(":")[2].strip() for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in requirements if "extra ==" not in r]


def dependency_closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The distributions of this environment that ``requirements`` pull in, transitively (no extras)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, metadata.Distribution] = {}
    todo = list(requirements)
    while todo:
        req = Requirement(todo.pop())
        if (req.marker is not None and not req.marker.evaluate({"extra": ""})) or canonicalize_name(req.name) in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{req.name} is not installed here, and the runtime-only venv is built offline from this "
                        f"environment's packages (install lcf's dependencies first)")
        assert req.specifier.contains(dist.version, prereleases=True), f"{req.name} {dist.version} here; need {req}"
        found[canonicalize_name(req.name)] = dist
        todo.extend(dist.requires or [])
    return list(found.values())


def link_distribution(dist: metadata.Distribution, purelib: Path) -> None:
    """Make ``dist`` installed in a venv: link its top-level files and folders (code and dist-info)."""
    assert dist.files, f"{dist.metadata['Name']} has no RECORD of its files; cannot link it into a venv"
    root = Path(dist.locate_file(""))
    tops = {Path(f).parts[0] for f in dist.files if not str(f).startswith("..")} - {"__pycache__"}
    for top in sorted(tops):
        if (root / top).exists() and not (purelib / top).exists():
            (purelib / top).symlink_to(root / top)


@pytest.fixture(scope="module")
def runtime_only(wheel, tmp_path_factory) -> Path:
    """A venv with the wheel and its runtime dependencies only: python of that venv."""
    py, purelib = new_venv(tmp_path_factory.mktemp("runtime") / "venv")
    for dist in dependency_closure(runtime_requirements(wheel)):
        link_distribution(dist, purelib)
    pip_install(py, str(wheel))  # no --no-deps: offline, pip finds every runtime dependency installed or fails
    code = f"import importlib.util as u; print([m for m in {EXTRA_ONLY!r} if u.find_spec(m)])"
    assert run([str(py), "-c", code], cwd=py.parent, env=env()).stdout.strip() == "[]"
    return py


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory) -> Path:
    """A folder with two tiny models saved as local folders and three adapters naming them: ``shared`` (a
    shared-context lcf_lowrank translator), ``composed`` (the same with a receiver LoRA) and ``per_token`` (an
    identity per-token map)."""
    import torch

    from lcf.export import adapter_config, export_token_map, write_adapter
    from lcf.pair import build_pair
    from lcf.registry import translators
    from lcf.runtime.token_kv import LowRank
    from lcf.translators.base import PairShapes
    from tests.conftest import tiny_gemma3, tiny_llama
    from tests.tiny_tokenizers import tiny_receiver_tokenizer, tiny_sharer_tokenizer

    root = tmp_path_factory.mktemp("tiny_adapters")
    r_tok, s_tok = tiny_receiver_tokenizer(), tiny_sharer_tokenizer()
    for name, model, tok in (("receiver", tiny_llama(vocab_size=len(r_tok)), r_tok),
                             ("sharer", tiny_gemma3(vocab_size=len(s_tok)), s_tok)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    recipe = {"sharer": str(root / "sharer"), "receiver": str(root / "receiver"), "layer_map": {"type": "nearest"}}
    pair = build_pair(recipe)
    torch.manual_seed(0)
    shapes = PairShapes.from_configs(pair.sharer.model.config, pair.receiver.model.config, pair.layer_map)
    translator = translators.build({"type": "lcf_lowrank", "rank": 4}, "translator", shapes=shapes)
    config = adapter_config(translator, translator_type="lcf_lowrank", pair=pair, recipe=recipe)
    write_adapter(root / "shared", translator, config)
    from lcf.runtime.receiver_lora import ReceiverLoRA

    lora = ReceiverLoRA(pair.receiver.model, rank=2)
    torch.nn.init.normal_(next(iter(lora.layers.values())).lora_B.weight)  # one layer's LoRA changes the receiver
    write_adapter(root / "composed", translator, config | {"receiver_adapter": lora.config_record()},
                  receiver_lora=lora)
    eye = torch.eye(32)  # the receiver's rows: 2 layers x 2 KV heads x 4 dims x (keys, values)
    export_token_map(LowRank(eye, eye, torch.zeros(32), torch.ones(32), torch.zeros(32)), root / "per_token",
                     sharer=pair.receiver, receiver=pair.receiver)
    return root


def answers_here(root: Path) -> dict[str, str]:
    """What this environment (the checkout, every dependency) answers with the same adapters."""
    import torch

    from lcf.runtime import load_adapter

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        per_token = load_adapter(root / "per_token")
        return {"shared": load_adapter(root / "shared").generate(PROMPT, max_new_tokens=NEW_TOKENS),
                "composed": load_adapter(root / "composed").generate(PROMPT, max_new_tokens=NEW_TOKENS),
                "per_token": per_token.receive(per_token.send(CONTEXT).to_bytes(), QUESTION,
                                               max_new_tokens=NEW_TOKENS)}
    finally:
        torch.set_num_threads(threads)


def test_runtime_only_install_loads_adapters_and_generates_sends_receives(runtime_only, tiny_adapters, tmp_path):
    args = [str(tiny_adapters), PROMPT, CONTEXT, QUESTION, str(NEW_TOKENS)]
    proc = run([str(runtime_only), "-c", RUNTIME_SCRIPT, *args], cwd=tmp_path, env=env())
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = answers_here(tiny_adapters)
    assert got["shared"] and got["per_token"]  # tiny random models: some text, the same as here
    assert got["shared"] == want["shared"] and got["per_token"] == want["per_token"]
    assert got["composed"] == want["composed"]
    assert got["cli_receive"] == want["per_token"]
    assert all(str(runtime_only.parent.parent) in p for p in [run([str(runtime_only), "-c",
               "import lcf; print(lcf.__file__)"], cwd=tmp_path, env=env()).stdout.strip()])  # the wheel's lcf
    loaded = [m for m in got["modules"] if m.partition(".")[0] in NOT_IMPORTED
              or m.startswith(("lcf.training", "lcf.eval", "lcf.cli"))]
    assert not loaded, f"loading and using adapters imported {loaded}"


def test_runtime_only_install_names_the_extra_a_training_command_needs(runtime_only, tmp_path):
    proc = subprocess.run([str(runtime_only.parent / "lcf"), "train", "recipe.yaml"], cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: `lcf train` needs the package 'lightning', which is not installed; install it with: "
        "pip install 'lcf[train]'")
