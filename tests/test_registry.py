"""Component registry: registration, lookup errors, dotted paths, plugins, signature checks."""
from __future__ import annotations

import sys
import textwrap
from typing import Literal

import pytest

from lcf.errors import RecipeError, RegistryError
from lcf.registry import Registry, layer_maps


class Base:
    def __init__(self, width: int = 8, name: str = "x", scale: float = 1.0, mode: Literal["a", "b"] = "a"):
        self.width, self.name, self.scale, self.mode = width, name, scale, mode


def make_registry() -> Registry:
    reg = Registry("widgets", base=Base)
    reg.register("base")(Base)
    return reg


def test_register_and_build():
    reg = make_registry()
    obj = reg.build({"type": "base", "width": 4, "scale": 2})
    assert (obj.width, obj.scale) == (4, 2)


def test_duplicate_name_names_both_modules():
    reg = make_registry()

    class Other(Base):
        pass

    with pytest.raises(RegistryError) as err:
        reg.register("base")(Other)
    msg = str(err.value)
    assert "Base" in msg and "Other" in msg and "override=True" in msg and __name__ in msg
    reg.register("base", override=True)(Other)
    assert reg.get("base") is Other


def test_unknown_name_lists_close_matches_and_all_names():
    reg = make_registry()
    reg.register("lowrank")(Base)
    with pytest.raises(RegistryError) as err:
        reg.get("lowrnak")
    msg = str(err.value)
    assert "Did you mean 'lowrank'" in msg and "base, lowrank" in msg


def test_dotted_path_imports_the_class():
    reg = make_registry()
    assert reg.get("tests.test_registry.Base") is Base
    assert reg.get("tests.test_registry:Base") is Base
    with pytest.raises(RegistryError, match="has no attribute 'Bsae'.*Did you mean 'Base'"):
        reg.get("tests.test_registry.Bsae")
    with pytest.raises(RegistryError, match="could not import module"):
        reg.get("no_such_module_xyz.Thing")


def test_base_class_enforced():
    reg = make_registry()
    with pytest.raises(RegistryError, match="must subclass"):
        reg.register("bad")(dict)


def test_misspelled_argument_names_the_key_path():
    reg = make_registry()
    with pytest.raises(RecipeError) as err:
        reg.build({"type": "base", "widht": 3}, path="translator")
    assert "translator.widht" in str(err.value) and "Did you mean 'width'" in str(err.value)


@pytest.mark.parametrize(
    "key,value,expected",
    [("width", "eight", "int"), ("width", 2.5, "int"), ("scale", "big", "float"), ("mode", "c", "Literal")],
)
def test_wrong_argument_type(key, value, expected):
    reg = make_registry()
    with pytest.raises(RecipeError) as err:
        reg.build({"type": "base", key: value}, path="translator")
    assert f"translator.{key}" in str(err.value) and expected in str(err.value)


def test_build_error_chains_the_original():
    reg = Registry("widgets")

    @reg.register("boom")
    class Boom:
        def __init__(self, n: int = 1):
            raise ZeroDivisionError("inner problem")

    with pytest.raises(RecipeError, match="compressor: building 'boom' failed: ZeroDivisionError") as err:
        reg.build({"type": "boom"}, path="compressor")
    assert isinstance(err.value.__cause__, ZeroDivisionError)


def test_missing_type_and_required_argument():
    reg = Registry("widgets")

    @reg.register("needs")
    class Needs:
        def __init__(self, depth: int):
            self.depth = depth

    with pytest.raises(RecipeError, match="missing 'type'"):
        reg.build({"depth": 1}, path="x")
    with pytest.raises(RecipeError, match=r"x\.depth: required argument"):
        reg.build({"type": "needs"}, path="x")


def test_subclass_kwargs_follow_the_parent_signature():
    reg = make_registry()

    @reg.register("child")
    class Child(Base):
        def __init__(self, extra: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.extra = extra

    obj = reg.build({"type": "child", "extra": 2, "width": 3})
    assert (obj.extra, obj.width) == (2, 3)
    with pytest.raises(RecipeError, match="child.witdh"):
        reg.build({"type": "child", "witdh": 3}, path="child")


def test_entry_point_plugins_load_lazily(tmp_path, monkeypatch):
    pkg = tmp_path / "lcf_widget_plugin.py"
    pkg.write_text(textwrap.dedent("""
        LOADED = True
        class Fancy:
            def __init__(self, level: int = 1):
                self.level = level
    """))
    dist = tmp_path / "lcf_widget_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lcf-widget-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lcf.widgets]\nfancy = lcf_widget_plugin:Fancy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widgets")
    assert "lcf_widget_plugin" not in sys.modules  # nothing imported before a lookup
    assert reg.build({"type": "fancy", "level": 3}).level == 3
    assert "fancy" in reg.names()


def test_builtin_layer_maps_registered():
    assert {"terminal", "nearest", "explicit"} <= set(layer_maps.names())
