"""CLI end to end on the real pair, and import lightness."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lcf.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_import_lcf_is_light():
    code = "import sys, lcf, lcf.registry, lcf.cards; print(sorted(m for m in ('lightning', 'omegaconf', 'deepspeed', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_command_and_error_exit_code(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert main(["models", "prepare", "qwen3-0.6b"]) == 2
    assert "is loaded directly" in capsys.readouterr().err


@pytest.mark.real
def test_prepare_and_inspect_real_pair(capsys, real_receiver, real_sharer):
    assert main(["models", "prepare", "--all"]) == 0  # already prepared by the fixtures: fast
    assert main(["inspect", str(REPO / "recipes" / "inspect.yaml"), "--text", "Hello 2024 wörld"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\(1, 1, \d+, 256\)", out) and re.search(r"\(1, 3, \d+, 64\)", out)  # K shapes
    assert "R0<-S0" in out and "R29<-S17" in out  # nearest layer map: ends aligned
    assert re.search(r"\d+ receiver tokens, \d+ sharer tokens, \d+ fused positions", out)
