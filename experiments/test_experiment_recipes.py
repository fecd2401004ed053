"""The experiments' recipes (run with `python -m pytest experiments/test_experiment_recipes.py`): they still compose and
validate, and none of them is also shipped in recipes/ (the wheel holds only recipes/)."""
from __future__ import annotations

from pathlib import Path

import pytest

from lcf.config import load_recipe, validate_recipe

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "recipes"
RECIPES = sorted(HERE.glob("**/recipes/*.yaml"))


def test_there_are_experiment_recipes():
    assert RECIPES, f"no recipes under {HERE}/**/recipes/: were they moved again? Update this test's glob"


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(HERE)) for p in RECIPES])
def test_experiment_recipe_validates(recipe: Path):
    validate_recipe(load_recipe(recipe), origin=str(recipe))


def test_no_experiment_recipe_is_also_shipped():
    shipped = {p.name for p in SHIPPED.rglob("*.yaml")}
    both = sorted(p.name for p in RECIPES if p.name in shipped)
    assert not both, f"{both} are both in recipes/ (shipped in the wheel) and under experiments/; keep one copy"
