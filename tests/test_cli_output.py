"""What the command line prints around its work: the extra to install when a command misses an optional
package (one line; GGUF conversion too), and no Lightning tips or third-party deprecation warnings."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from lcf.cli.extras import EXTRAS, extra_for
from tests.conftest import REPO

RUNTIME_PACKAGES = {"torch", "transformers", "safetensors", "pyyaml", "numpy"}


def dist_names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower().replace("-", "_") for r in requirements}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_extras_table_mirrors_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["optional-dependencies"]
    assert dist_names(project["dependencies"]) == RUNTIME_PACKAGES  # `pip install lcf`: the runtime only
    for extra, packages in EXTRAS.items():
        assert dist_names(declared[extra]) == set(packages), extra
    assert declared["all"] == ["lcf[train,eval,gguf]"]
    assert extra_for("omegaconf", "eval-xc") == "eval" and extra_for("omegaconf", "validate") == "train"
    assert extra_for("yaml") is None


def test_a_command_missing_an_optional_package_names_the_extra_in_one_line():
    for package, command, extra in (("lightning", "train", "train"), ("omegaconf", "eval-xc", "eval")):
        args = [command, "missing.yaml"] if command == "train" else [command, "adapter", "--out", "report"]
        proc = run_python(f"import sys; sys.modules[{package!r}] = None\n"
                          f"from lcf.cli import main; raise SystemExit(main({args!r}))")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [
            f"error: `lcf {command}` needs the package {package!r}, which is not installed; install it with: "
            f"pip install 'lcf[{extra}]'"]


def test_converting_a_gguf_model_without_gguf_names_the_extra(monkeypatch):
    import importlib.util

    from lcf.errors import ModelLoadError
    from lcf.models.loading import prepare

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"needs the gguf package.*pip install 'lcf\[gguf\]'"):
        prepare("gemma3-270m", force=True)


def test_cli_output_has_no_lightning_tips_nor_third_party_deprecations():
    code = """
import logging, sys, warnings
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from lcf.cli.quiet import quiet_third_party
quiet_third_party()
log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
log.info("GPU available: False, used: False")
log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
def warn_from(module, category):
    exec(f"import warnings; warnings.warn('from {module}', {category.__name__})", {"__name__": module})
warn_from("some_package.module", FutureWarning)
warn_from("some_package.module", DeprecationWarning)
warn_from("lcf.some_module", FutureWarning)
warn_from("some_package.module", UserWarning)
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["GPU available: False, used: False"]
    shown = [line for line in proc.stderr.splitlines() if "Warning: from" in line]
    assert [line.split(": ", 1)[1] for line in shown] == ["FutureWarning: from lcf.some_module",
                                                          "UserWarning: from some_package.module"]
