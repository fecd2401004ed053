"""Recipes: composition, overrides, validation errors, user components, the CLI."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from lcf.cli import main
from lcf.config import load_recipe, save_resolved, validate_recipe
from lcf.errors import RecipeError
from lcf.registry import layer_maps

REPO = Path(__file__).resolve().parent.parent
# the recipes at the top and the papers' setups in recipes/paper/
SHIPPED = sorted((REPO / "recipes").glob("*.yaml")) + sorted((REPO / "recipes" / "paper").glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("recipe", SHIPPED, ids=[str(p.relative_to(REPO / "recipes")) for p in SHIPPED])
def test_every_shipped_recipe_validates(recipe):
    validate_recipe(load_recipe(recipe), origin=str(recipe))


def test_defaults_overrides_and_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("LCF_TEST_ROOT", "/data/here")
    write(tmp_path / "base" / "a.yaml", """
        sharer: gemma3-270m
        receiver: smollm2-135m-instruct
        seed: 1
        data_root: ${oc.env:LCF_TEST_ROOT,/nowhere}
        layer_map: {type: terminal}
    """)
    r = write(tmp_path / "r.yaml", """
        defaults: [base/a.yaml]
        seed: 2
        name: run-${seed}
    """)
    cfg = load_recipe(r, ["layer_map.type=nearest", "seed=3"])
    assert cfg.seed == 3 and cfg.name == "run-3" and cfg.data_root == "/data/here"
    assert cfg.layer_map.type == "nearest" and cfg.sharer == "gemma3-270m"
    out = save_resolved(cfg, tmp_path / "run")
    assert yaml.safe_load(out.read_text())["name"] == "run-3"


def test_pair_card_fills_models(tmp_path):
    r = write(tmp_path / "r.yaml", "pair: gemma3-to-smollm2\n")
    data = validate_recipe(load_recipe(r))
    assert data["sharer"] == "gemma3-270m" and data["receiver"] == "smollm2-135m-instruct"
    assert data["layer_map"]["type"] == "nearest"


def test_changing_a_component_type_drops_the_old_arguments(tmp_path):
    """`translator.type=gated_fusion` on an LCF recipe must not keep LCF's `rank` (gated_fusion refuses it);
    an override without `type` still merges, and `data` keeps its shared loading options."""
    write(tmp_path / "base.yaml", """
        pair: gemma3-to-smollm2
        translator: {type: lcf_lowrank, rank: 128, mlp_ratio: 4}
    """)
    child = write(tmp_path / "child.yaml",
                  "defaults: [base.yaml]\ntranslator: {type: c2c_projector, hidden_dim: 256}\n")
    assert dict(load_recipe(child).translator) == {"type": "c2c_projector", "hidden_dim": 256}
    cfg = load_recipe(tmp_path / "base.yaml", ["translator.type=gated_fusion", "token_alignment.read_ahead=1"])
    assert dict(cfg.translator) == {"type": "gated_fusion"}
    assert cfg.token_alignment.read_ahead == 1 and cfg.token_alignment.type == "maximal_coverage"
    validate_recipe(cfg)
    assert dict(load_recipe(tmp_path / "base.yaml", ["translator.rank=64"]).translator) == {
        "type": "lcf_lowrank", "rank": 64, "mlp_ratio": 4}
    data = write(tmp_path / "data.yaml", "defaults: [base.yaml]\ndata: {type: instruct_json, train_size: 64}\n")
    assert load_recipe(data, ["data.type=eval_task"]).data.train_size == 64
    # the pair card's aligner arguments (`pick: longest`) are not merged into another aligner
    own = write(tmp_path / "own.yaml", "pair: gemma3-to-smollm2\ntoken_alignment: {type: my_pkg.Aligner}\n")
    assert dict(load_recipe(own).token_alignment) == {"type": "my_pkg.Aligner"}


def base_recipe(tmp_path: Path, extra: str) -> Path:
    return write(tmp_path / "r.yaml", "sharer: gemma3-270m\nreceiver: smollm2-135m-instruct\n" + textwrap.dedent(extra))


def test_misspelled_top_level_key(tmp_path):
    with pytest.raises(RecipeError, match="unknown top-level key 'layer_mapp'.*Did you mean 'layer_map'"):
        validate_recipe(load_recipe(base_recipe(tmp_path, "layer_mapp: {type: nearest}\n")))


def test_misspelled_argument_names_the_key_path(tmp_path):
    with pytest.raises(RecipeError, match=r"layer_map\.drop_clampd.*Did you mean 'drop_clamped'"):
        validate_recipe(load_recipe(base_recipe(tmp_path, "layer_map: {type: terminal, drop_clampd: true}\n")))


def test_wrong_argument_type(tmp_path):
    with pytest.raises(RecipeError, match=r"layer_map\.drop_clamped: expected bool, got str"):
        validate_recipe(load_recipe(base_recipe(tmp_path, "layer_map: {type: terminal, drop_clamped: maybe}\n")))


def test_unknown_component_with_suggestion(tmp_path):
    with pytest.raises(RecipeError, match=r"layer_map\.type: unknown layer_map 'neares'.*Did you mean 'nearest'.*explicit"):
        validate_recipe(load_recipe(base_recipe(tmp_path, "layer_map: {type: neares}\n")))


def test_unknown_model_card_with_suggestion(tmp_path):
    r = write(tmp_path / "r.yaml", "sharer: gemma3-270\nreceiver: smollm2-135m-instruct\n")
    with pytest.raises(RecipeError, match="sharer: 'gemma3-270' is not a model card.*Did you mean 'gemma3-270m'"):
        validate_recipe(load_recipe(r))


def test_explicit_layer_map_checked_against_card_depths(tmp_path):
    r = base_recipe(tmp_path, "layer_map: {type: explicit, sharer_layers: [0, 1, 2]}\n")
    with pytest.raises(RecipeError, match="has 3 entries but the receiver has 30"):
        validate_recipe(load_recipe(r))


def test_defaults_cycle_and_missing_file(tmp_path):
    write(tmp_path / "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path / "b.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe(write(tmp_path / "c.yaml", "seed: 1\n"), ["oops"])


def test_user_subclass_registered_in_own_module_builds_from_recipe(tmp_path, monkeypatch):
    write(tmp_path / "my_components.py", """
        from lcf.align.layers import NearestLayerMap, LayerMap
        from lcf.registry import layer_maps

        @layer_maps.register("every_other")
        class EveryOther(NearestLayerMap):
            def __init__(self, phase: int = 0, **kwargs):
                super().__init__(**kwargs)
                self.phase = phase

            def __call__(self, sharer_layers, receiver_layers):
                base = super().__call__(sharer_layers, receiver_layers)
                keep = [s if t % 2 == self.phase else None for t, s in enumerate(base.sharer_of)]
                return LayerMap(tuple(keep), sharer_layers)
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    r = base_recipe(tmp_path, "imports: [my_components]\nlayer_map: {type: every_other, phase: 1}\n")
    data = validate_recipe(load_recipe(r))
    built = layer_maps.build(data["layer_map"], "layer_map")(18, 30)
    assert built.fused == list(range(1, 30, 2))
    bad = base_recipe(tmp_path, "imports: [my_components]\nlayer_map: {type: every_other, phse: 1}\n")
    with pytest.raises(RecipeError, match="layer_map.phse.*Did you mean 'phase'"):
        validate_recipe(load_recipe(bad))
    layer_maps._items.pop("every_other")


def test_missing_user_module(tmp_path):
    with pytest.raises(RecipeError, match="imports: cannot import 'not_a_module_abc'"):
        load_recipe(base_recipe(tmp_path, "imports: [not_a_module_abc]\n"))


def test_cli_validate_and_list(tmp_path, capsys):
    assert main(["validate", *map(str, SHIPPED)]) == 0
    bad = base_recipe(tmp_path, "layer_map: {type: neares}\n")
    assert main(["validate", str(bad)]) == 1
    assert "Did you mean 'nearest'" in capsys.readouterr().err
    assert main(["validate", str(SHIPPED[0]), "layer_map.type=bogus"]) == 1
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "nearest" in out and "smollm2-135m-instruct" in out and "gemma3-to-smollm2" in out


def test_compressor_and_data_must_cut_the_context_alike():
    tokens = ["compressor.spans=tokens", "compressor.span_tokens=2", "data.spans=tokens", "data.span_tokens=2"]
    validate_recipe(load_recipe("recipes/crosscontext.yaml", tokens))  # tokens of 2 on both sides
    with pytest.raises(RecipeError, match=r"compressor.spans \(tokens, 2 per span\) and data.spans \(tokens, 4 per"):
        validate_recipe(load_recipe("recipes/crosscontext.yaml", [*tokens[:3], "data.span_tokens=4"]))
    with pytest.raises(RecipeError, match=r"e.g. data.spans=sentence"):  # the data's default is paragraph
        validate_recipe(load_recipe("recipes/crosscontext.yaml", ["compressor.spans=sentence"]))
