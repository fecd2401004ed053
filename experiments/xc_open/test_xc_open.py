"""experiments/xc_open (run with `python -m pytest experiments/xc_open`): the open-information check of a
cross-context adapter (its recipes are validated by experiments/test_experiment_recipes.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from tests.test_xc_e2e import xc_adapter, xc_adapter_dir, xc_pair  # noqa: F401  (fixtures)
from tests.test_train_export import tiny_pair  # noqa: F401  (the fixture xc_pair builds on)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the experiment's own module
from xc_open import repeat_overlap, report, run  # noqa: E402


def test_open_value_check_scores_binding(xc_adapter):
    results = run(xc_adapter, people=[2], items=3, slot_sweep=[2], sweep_people=2, batch_size=3)
    res = results["people"]["2"]
    assert res["selection"]["data"]["values"] == "open" and res["n"] == 3
    assert list(res["scores"]) == ["receiver alone", "receiver + full context", "lcf-x", "lcf-x int8", "lcf-x int4",
                                   "lcf-x (zero)", "lcf-x (mismatched)"]
    assert all(0 <= s["other"] <= 1 for s in res["scores"].values())  # two people: one distractor each
    assert results["sweep"] == {}  # a one-slot adapter has no slot sweep
    assert "| lcf-x int4 |" in report(results, 2) and "other" in report(results, 2)
    assert "repeat" not in results  # not trained with repeats, not asked
    asked = run(xc_adapter, people=[1], items=2, slot_sweep=[], sweep_people=1, batch_size=2, repeat=True)
    assert list(asked["repeat"]["scores"]) == ["receiver + full context", "lcf-x", "lcf-x (zero)",
                                               "lcf-x (mismatched)"]
    assert "Asked to repeat the message (2 held-out worlds)" in report(asked, 1)
    assert set(asked["repeat"]["overlap"]) == set(asked["repeat"]["scores"])
    got = repeat_overlap({"s": [{"pred": "Ana lives in Rome"}, {"pred": "Bo has a cat"}]},
                         ["Ana lives in Rome.", "Bo has a dog."])["s"]
    assert got["own"] == (1.0 + 3 / 5) / 2 and got["other"] == 0.0
