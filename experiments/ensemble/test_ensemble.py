"""experiments/ensemble (run with `python -m pytest experiments/ensemble`): what the sharer's own answers could
add to a system, over `lcf eval` results files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lcf.errors import LCFError
from lcf.eval.paired import load_predictions

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the experiment's own module
from ensemble import main as ensemble_main  # noqa: E402
from ensemble import sweep  # noqa: E402


def test_sharer_answers_ceiling_adds_option_scores(tmp_path):
    """Per-option scores of a system plus w times the sharer's; acc_norm divides the sum by the option's length,
    as lm-eval does."""
    choices = [["a", "bbbb"], ["cc", "d"], ["e", "f"]]
    rows_arc = [{"id": f"q{i}", "question": "?", "choices": {"text": c, "label": ["A", "B"]}, "answerKey": "B"}
                for i, c in enumerate(choices)]
    (tmp_path / "arc").mkdir()
    (tmp_path / "arc/ARC-Easy-validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows_arc))

    def mc(scores):
        return [{"id": f"q{i}", "gold": 1, "scores": s, "correct": s[1] > s[0], "correct_norm": False}
                for i, s in enumerate(scores)]
    report = {"predictions": {"receiver": {"arc_easy": mc([[-1.0, -2.0], [-1.0, -3.0], [-1.0, -1.5]])},
                              "sharer": {"arc_easy": mc([[-3.0, -1.0], [-1.0, -2.0], [-2.0, -1.0]])}}}
    (tmp_path / "r.json").write_text(json.dumps(report))
    preds = load_predictions([tmp_path / "r.json"])
    (acc,) = sweep(preds, ["receiver"], [0.0, 1.0], task="arc_easy", metric="acc", data_root=str(tmp_path),
                   resamples=200)
    # w=1 sums: q0 [-4, -3] right, q1 [-2, -5] wrong, q2 [-3, -2.5] right
    assert acc["scores"] == {0.0: 0.0, 1.0: pytest.approx(200 / 3)} and acc["best_weight"] == 1.0
    assert acc["gain"] == pytest.approx(200 / 3) and acc["n"] == 3
    (norm,) = sweep(preds, ["receiver"], [0.0, 1.0], task="arc_easy", data_root=str(tmp_path), resamples=200)
    # per character at w=0: q0 [-1, -0.5] right, q1 [-0.5, -3] wrong, q2 [-1, -1.5] wrong
    assert norm["scores"][0.0] == pytest.approx(100 / 3)
    assert ensemble_main([str(tmp_path / "r.json"), "--task", "arc_easy", "--systems", "receiver", "--weights", "1",
                          "--data-root", str(tmp_path), "--resamples", "100"]) == 0
    with pytest.raises(LCFError, match="not in the results"):
        sweep(preds, ["lcf"], [0.0], task="arc_easy", data_root=str(tmp_path))
    with pytest.raises(LCFError, match="share no item of task 'arc_challenge'"):
        sweep(preds, ["receiver"], [0.0], task="arc_challenge", metric="acc")
    for system in ("receiver", "sharer"):
        report["predictions"][system]["arc_easy"][0]["id"] = "elsewhere"
    (tmp_path / "r.json").write_text(json.dumps(report))
    with pytest.raises(LCFError, match="'elsewhere'.* not in task 'arc_easy'"):
        sweep(load_predictions([tmp_path / "r.json"]), ["receiver"], [0.0], task="arc_easy", data_root=str(tmp_path))
    report["predictions"]["sharer"]["arc_easy"][0]["scores"] = [-1.0]
    (tmp_path / "r.json").write_text(json.dumps(report))
    with pytest.raises(LCFError, match="per-option 'scores' of equal length"):
        sweep(load_predictions([tmp_path / "r.json"]), ["receiver"], [0.0], task="arc_easy", metric="acc")
