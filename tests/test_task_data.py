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
