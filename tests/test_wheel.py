"""The wheel: built from the project, installed (not editable) into a fresh venv offline, it finds its
model/pair cards and shipped recipes from any directory."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCES = ("lcf", "registry", "recipes", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding only the lcf wheel; its dependencies come from this interpreter's site-packages."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy: the build must not write build/ or egg-info into the checkout
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp / "dist"), "-q"], cwd=tmp)
    wheel = next((tmp / "dist").glob("lcf-*.whl"))
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    py = venv / "bin" / "python"
    purelib = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip()
    # reuse the installed dependencies (no index): their folders go on the venv's path after its own
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-index", "--no-deps", "-q", str(wheel)],
        cwd=tmp)
    return venv


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
