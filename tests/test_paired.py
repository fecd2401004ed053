"""Paired bootstrap differences and the follows-the-sharer count over `lcf eval` results files."""
from __future__ import annotations

import json

import pytest

from lcf.errors import LCFError
from lcf.eval.paired import follows_sharer, load_predictions, main, paired_difference


def rows(picks, golds):
    return [{"id": f"q{i}", "pred": p, "pred_norm": p, "gold": g, "correct": p == g, "correct_norm": p == g}
            for i, (p, g) in enumerate(zip(picks, golds))]


GOLD = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


@pytest.fixture
def two_reports(tmp_path):
    base = {"predictions": {"receiver": {"arc_easy": rows([1, 1, 0, 0, 0, 0, 0, 0, 1, 1], GOLD)},
                            "sharer": {"arc_easy": rows([0, 1, 2, 3, 1, 0, 0, 0, 1, 1], GOLD)}}}
    fused = {"predictions": {"lcf": {"arc_easy": rows([0, 1, 2, 0, 0, 0, 3, 0, 1, 1], GOLD)}}}
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(fused))
    return [tmp_path / "a.json", tmp_path / "b.json"]


def test_paired_difference_and_interval(two_reports):
    preds = load_predictions(two_reports)
    d = paired_difference(preds, "lcf", "receiver", resamples=2000)
    assert d["n"] == 10 and d["a_score"] == 50.0 and d["b_score"] == 30.0 and d["diff"] == pytest.approx(20.0)
    assert d["low"] <= d["diff"] <= d["high"] and d["high"] - d["low"] > 0
    same = paired_difference(preds, "receiver", "receiver")
    assert same["diff"] == same["low"] == same["high"] == 0.0  # a system against itself: no spread
    with pytest.raises(LCFError, match="not in the results"):
        paired_difference(preds, "lcf", "lora")


def test_averaged_sides(two_reports):
    """'A+B' scores each item by the mean of A and B (seeds of one adapter against their controls)."""
    preds = load_predictions(two_reports)
    d = paired_difference(preds, "lcf+sharer", "receiver", resamples=500)
    # lcf right on q0 q1 q2 q4 q9, sharer on q0 q1 q2 q3 q9 (mean 50 %, but item by item), receiver on 3
    assert d["a_score"] == pytest.approx(50.0) and d["diff"] == pytest.approx(20.0)
    assert paired_difference(preds, "lcf+sharer", "lcf", resamples=200)["diff"] == pytest.approx(0.0)
    both = paired_difference(preds, "lcf+sharer", "sharer+lcf", resamples=200)
    assert both["diff"] == both["low"] == both["high"] == 0.0
    with pytest.raises(LCFError, match="'lora' is not in the results"):
        paired_difference(preds, "lcf+lora", "receiver")


def test_follows_sharer(two_reports):
    f = follows_sharer(load_predictions(two_reports), "lcf")
    # receiver and sharer disagree on q0, q2, q3, q4; lcf takes the sharer's pick on q0, q2 and the
    # receiver's on q3, q4; the sharer is right on q0, q2, q3
    assert (f["disagree"], f["sharer"], f["receiver"], f["other"]) == (4, 2, 2, 0)
    assert (f["sharer_right"], f["follows_sharer_when_right"]) == (3, 2)


def test_cli_prints_a_table(two_reports, capsys):
    assert main([*map(str, two_reports), "--pairs", "lcf:receiver", "--follow", "lcf", "--resamples", "500"]) == 0
    out = capsys.readouterr().out
    assert "| lcf - receiver | 10 | 50.0 | 30.0 | +20.0 [" in out and "picks the sharer's option 2" in out
    with pytest.raises(LCFError, match="SYSTEM_A:SYSTEM_B"):
        main([str(two_reports[0]), "--pairs", "receiver"])
    # against another system than the receiver alone (a composed adapter's LoRA alone): lcf and sharer disagree on
    # q3, q4 and q6; "lcf" follows itself, so the sharer's pick is never taken there
    assert main([*map(str, two_reports), "--follow", "lcf", "--follow-base", "lcf", "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert "on 3 items where lcf and sharer disagree it picks the sharer's option 0, lcf's 3, another 0" in out
    with pytest.raises(LCFError, match="--follow-base 'nope' is not in the results"):
        main([*map(str, two_reports), "--follow", "lcf", "--follow-base", "nope"])


def test_merge_cuts_runs_to_their_common_items(two_reports, tmp_path):
    from lcf.eval.paired import merge_results

    for p, n in zip(two_reports, (10, 6)):  # the second run scored a smaller sample
        data = json.loads(p.read_text())
        data["tasks"] = {"arc_easy": {"n": n, "item_ids": [f"q{i}" for i in range(n)]}}
        data["systems"] = {s: {"name": s} for s in data["predictions"]}
        data["scores"] = {s: {"arc_easy": {}} for s in data["predictions"]}
        data["predictions"] = {s: {"arc_easy": v["arc_easy"][:n]} for s, v in data["predictions"].items()}
        p.write_text(json.dumps(data))
    merged = merge_results(two_reports)
    assert sorted(merged["systems"]) == ["lcf", "receiver", "sharer"] and merged["tasks"]["arc_easy"]["n"] == 6
    assert len(merged["predictions"]["receiver"]["arc_easy"]) == 6
    # receiver picks [1, 1, 0, 0, 0, 0] against gold [0, 1, 2, 3, 0, 1]: right on q1 and q4
    assert merged["scores"]["receiver"]["arc_easy"]["acc_norm"] == pytest.approx(2 / 6)
    other = json.loads(two_reports[1].read_text()) | {"tasks": {"arc_easy": {"n": 1, "item_ids": ["z"]}}}
    (tmp_path / "c.json").write_text(json.dumps(other))
    with pytest.raises(LCFError, match="share no item"):
        merge_results([two_reports[0], tmp_path / "c.json"])


def test_xc_reports_compare_by_f1_em_and_contains(tmp_path, capsys, two_reports):
    def xc(preds):
        golds = [["Paris"], ["the red fox", "red fox"], ["1990"]]
        return [{"id": f"x{i}", "pred": p, "text": p + " indeed", "gold": g} for i, (p, g) in enumerate(zip(preds, golds))]
    path = tmp_path / "xc.json"
    path.write_text(json.dumps({"predictions": {"lcf-x": xc(["Paris", "a red fox", "no idea"]),
                                                "receiver alone": xc(["Rome", "no idea", "no idea"])}}))
    preds = load_predictions([path])
    f1 = paired_difference(preds, "lcf-x", "receiver alone", metric="f1", resamples=500)
    assert f1["n"] == 3 and f1["a_score"] == pytest.approx(100 * (1 + 1) / 3) and f1["b_score"] == 0.0
    em = paired_difference(preds, "lcf-x", "receiver alone", metric="em", resamples=500)
    assert em["a_score"] == pytest.approx(100 * 2 / 3)  # "a red fox" normalises to "red fox"
    contains = paired_difference(preds, "lcf-x", "receiver alone", metric="contains", resamples=500)
    assert contains["a_score"] == pytest.approx(100 * 2 / 3)
    assert main([str(path), "--pairs", "lcf-x:receiver alone", "--metric", "f1", "--resamples", "200"]) == 0
    assert "| lcf-x - receiver alone | 3 | 66.7 | 0.0 |" in capsys.readouterr().out
    with pytest.raises(LCFError, match="cross-context reports"):  # multiple-choice rows have no answer text
        paired_difference(load_predictions(two_reports), "lcf", "receiver", metric="f1")
