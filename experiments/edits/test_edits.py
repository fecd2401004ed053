"""experiments/edits (run with `python -m pytest experiments/edits`): per-layer edit norms of an adapter."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lcf.errors import LCFError
from lcf.eval.tasks import load_task
from lcf.runtime import load_adapter
from tests.test_eval_harness import adapter_dir, task_root  # noqa: F401  (fixtures: a tiny trained adapter, ARC files)
from tests.test_train_export import tiny_pair  # noqa: F401  (the fixture adapter_dir trains on)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the experiment's own module
from edits import edit_norms  # noqa: E402
from edits import main as edits_main  # noqa: E402


def test_edit_norms_cli_and_closed_gates(adapter_dir, task_root, tmp_path, capsys):
    out = tmp_path / "edits.json"
    assert edits_main([str(adapter_dir), "--task", "arc_easy", "--limit", "5", "--batch-size", "4",
                       "--data-root", str(task_root), "--out", str(out)]) == 0
    assert "| layer | gate K / V |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["items"] == 5 and result["positions"] > 0
    fused = [row for row in result["layers"] if row["keys"]["edit_norm"] > 0]
    assert fused, "a trained adapter edits some layer"
    assert all(row["keys"]["specific"] > 0 and row["keys"]["receiver_norm"] > 0 for row in fused)
    adapter = load_adapter(adapter_dir)
    with torch.no_grad():
        for p in adapter.translator.gates.parameters():
            p.fill_(-20.0)  # every gate shut: the fused cache is the receiver's own
    arc = load_task("arc_easy", data_root=task_root)
    shut = edit_norms(adapter, [arc.cloze_prompt(it) for it in arc.all_items()[:3]])
    assert all(row[kind]["edit_norm"] == 0 and row[kind]["specific"] == 0
               for row in shut["layers"] for kind in ("keys", "values"))
    with pytest.raises(LCFError, match="at least 2 distinct"):
        edit_norms(adapter, ["same", "same"])
