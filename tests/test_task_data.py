"""`eval_task` training data: evaluation items as instruction examples in the eval prompt format."""
from __future__ import annotations

from pathlib import Path

import pytest

from lcf.data.rows import DataError
from lcf.eval.tasks import load_task
from lcf.registry import datasets
from tests.test_eval_harness import ARC_ROWS, SQUAD_ROWS, task_root  # noqa: F401  (task_root is a fixture)


RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "arc_mc.yaml"


def build(**kwargs):
    return datasets.get("eval_task")(**kwargs)


def test_mc_items_become_examples_in_the_eval_prompt_format(task_root):  # noqa: F811
    data = build(task="arc_easy", split="validation", data_root=str(task_root))
    rows = data.read()
    task = load_task("arc_easy", data_root=str(task_root))
    assert [r.prompt() for r in rows] == [task.prompt(it) for it in task.all_items()]
    assert [r.response for r in rows] == [
        row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])] for row in ARC_ROWS]
    letters = build(task="arc_easy", data_root=str(task_root), answer="letter").read()
    assert [r.response for r in letters][:3] == ["B", "A", "C"]  # numeric labels became letters
    assert "arc_easy:validation" in rows[0].source


def test_qa_items_answer_with_the_first_gold_answer(task_root):  # noqa: F811
    rows = build(task="squad", data_root=str(task_root)).read()
    assert [r.response for r in rows] == [row["answers"]["text"][0] for row in SQUAD_ROWS]
    assert rows[0].prompt().startswith("The cat sat on the mat.")


def test_bad_arguments(task_root):  # noqa: F811
    with pytest.raises(DataError, match="answer must be"):
        build(task="arc_easy", answer="text")
    with pytest.raises(Exception, match="arc_easy"):
        build(task="arc_eazy", data_root=str(task_root)).read()  # unknown task: close names listed
    with pytest.raises(DataError, match="has no option"):
        build(task="arc_easy", data_root=str(task_root), task_options={"bogus": 1}).read()


def test_recipe_validates_and_names_the_wrong_key():
    from lcf.config import load_recipe, validate_recipe
    from lcf.errors import RecipeError

    validate_recipe(load_recipe(RECIPE), origin="arc_mc")
    with pytest.raises(RecipeError, match="data.files"):
        validate_recipe(load_recipe(RECIPE, ["data.files=[x]"]), origin="arc_mc")


OBQA_ROWS = [{"id": f"o{i}", "question_stem": f"The sun is {i}", "answerKey": "A",
              "choices": {"text": [f"hot {i}", "cold", "blue", "wet"], "label": ["A", "B", "C", "D"]}} for i in range(6)]
SCIQ_ROWS = [{"question": f"What is {i}?", "distractor1": "a", "distractor2": "b", "distractor3": "c",
              "correct_answer": f"gold {i}", "support": f"  Support {i}." if i % 2 else ""} for i in range(8)]


@pytest.fixture(scope="module")
def mix_root(tmp_path_factory) -> Path:
    from tests.test_eval_harness import write_jsonl

    root = tmp_path_factory.mktemp("mix")
    write_jsonl(root / "arc/ARC-Easy-train.jsonl", ARC_ROWS)
    write_jsonl(root / "openbookqa/openbookqa-main-train.jsonl", OBQA_ROWS)
    write_jsonl(root / "sciq/sciq-train.jsonl", SCIQ_ROWS)
    return root


def test_cloze_format_is_lm_eval_context_and_continuation(mix_root):
    rows = build(task="arc_easy", split="train", format="cloze", data_root=str(mix_root)).read()
    assert rows[0].prompt() == "Question: What is 2 + 2?\nAnswer:" and rows[0].response == " 4"
    assert rows[2].response == " park"  # numeric answer key "3"
    obqa = build(task="openbookqa", split="train", format="cloze", data_root=str(mix_root)).read()
    assert obqa[1].prompt() == "The sun is 1" and obqa[1].response == " hot 1"
    sciq = build(task="sciq", format="cloze", data_root=str(mix_root)).read()  # its only split: train
    assert sciq[1].prompt() == "Support 1.\nQuestion: What is 1?\nAnswer:" and sciq[1].response == " gold 1"
    assert sciq[0].prompt() == "\nQuestion: What is 0?\nAnswer:"  # empty support, as lm-eval renders it
    item = load_task("sciq", data_root=str(mix_root)).all_items()[3]
    assert item.choices == ["a", "b", "c", "gold 3"] and item.answer == 3  # lm-eval's option order
    with pytest.raises(DataError, match="cloze"):
        build(task="arc_easy", format="cloze", answer="letter")
    with pytest.raises(DataError, match="multiple-choice"):
        build(task="squad", format="cloze", data_root=str(task_root_of(mix_root))).read()


def task_root_of(mix_root: Path) -> Path:
    from tests.test_eval_harness import write_jsonl

    write_jsonl(mix_root / "squad/squad_v1.1_dev_sample_dev.jsonl", SQUAD_ROWS)
    return mix_root


def test_weighted_mixture_repeats_rows_and_keeps_validation_apart(mix_root, monkeypatch):
    import lcf.data.task_data as td

    monkeypatch.setattr(td, "example_features", lambda ex, *a, **k: {"source": ex.source, "index": ex.index})
    tasks = [{"name": "arc_easy", "split": "train", "weight": 2}, {"name": "openbookqa", "split": "train"},
             {"name": "sciq", "weight": 0.5}]
    data = build(tasks=tasks, format="cloze", data_root=str(mix_root), val_size=3, seed=1)
    train, val = data.prepare(None, None, None)
    key = lambda f: (f["source"], f["index"])  # noqa: E731
    assert len(val) == len({key(f) for f in val}) == 3
    assert not {key(f) for f in val} & {key(f) for f in train}  # no validation row is trained on
    counts = {}
    for f in [*train, *val]:
        counts.setdefault(f["source"], []).append(f["index"])
    arc_rows = [key(f) for f in [*train, *val] if f["source"] == "arc_easy:train"]
    # ARC rows twice (a row drawn into validation counts once there and is dropped from training)
    assert len(set(arc_rows)) == len(ARC_ROWS) and len([f for f in train if f["source"] == "arc_easy:train"]) >= 5
    assert sorted(set(counts["openbookqa:train"])) == list(range(len(OBQA_ROWS)))
    assert 1 <= len(set(counts["sciq:train"])) < len(SCIQ_ROWS)  # about half of SciQ
    same = build(tasks=tasks, format="cloze", data_root=str(mix_root), val_size=3, seed=1).prepare(None, None, None)
    assert [key(f) for f in same[0]] == [key(f) for f in train]  # seeded
    capped = build(tasks=tasks, format="cloze", data_root=str(mix_root), val_size=3, seed=1, train_size=4)
    assert len(capped.prepare(None, None, None)[0]) == 4
    # one task with weight 1 keeps instruct_json's order (recipes that used `task:` are unchanged)
    single = build(task="arc_easy", split="train", data_root=str(mix_root), val_size=2, seed=3)
    single.read()
    import random

    order = list(range(len(ARC_ROWS)))
    random.Random(3).shuffle(order)
    assert single.weighted_order(len(ARC_ROWS)) == order


def test_mixture_arguments_are_checked(mix_root):
    with pytest.raises(DataError, match="exactly one of `task`"):
        build(task="arc_easy", tasks=[{"name": "sciq"}])
    with pytest.raises(DataError, match="exactly one of `task`"):
        build()
    with pytest.raises(DataError, match="weight must be a positive"):
        build(tasks=[{"name": "sciq", "weight": 0}])
    with pytest.raises(DataError, match="unknown key 'wieght'"):
        build(tasks=[{"name": "sciq", "wieght": 2}])
    with pytest.raises(DataError, match="inside its entry"):
        build(tasks=[{"name": "sciq"}], split="train")


def test_science_recipe_validates():
    from lcf.config import load_recipe, validate_recipe
    from lcf.errors import RecipeError

    recipe = RECIPE.parent / "science_mc.yaml"
    data = validate_recipe(load_recipe(recipe), origin="science_mc")
    assert [t["name"] for t in data["data"]["tasks"]] == ["arc_easy", "arc_challenge", "openbookqa", "sciq"]
    assert data["data"]["receiver_template"] == data["data"]["sharer_template"] == "raw"
    assert data["losses"][1] == {"type": "gate_sparsity", "weight": 0.0, "target_open": 0.33}
    with pytest.raises(RecipeError, match=r"losses\[1\] \(gate_sparsity\): weight must be a finite number >= 0"):
        validate_recipe(load_recipe(recipe, ["losses.1.weight=-1"]), origin="science_mc")
    with pytest.raises(RecipeError, match="target_open must be a fraction"):
        validate_recipe(load_recipe(recipe, ["losses.1.target_open=1.5"]), origin="science_mc")
    with pytest.raises(RecipeError, match="trainer.gate_sparsity moved: add `losses: "):
        validate_recipe(load_recipe(recipe, ["trainer.gate_sparsity=2.0"]), origin="science_mc")
