"""Reliability, part 2: bad adapters, recipes, data files, models, dtypes and devices; one test each,
naming what it tries and asserting the one-line error the user sees (see tests/test_reliability.py)."""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from lcf.cli import main
from lcf.config import load_recipe, validate_recipe
from lcf.errors import LCFError, RecipeError
from lcf.export import export
from lcf.runtime import AdapterError, load_adapter
from lcf.runtime.models import check_finite_cache
from lcf.training.run import train
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def adapter_dir(tiny_pair, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("rel_inputs")
    return export(train(recipe(tiny_pair, out / "runs"), ["trainer.max_steps=2"]), out / "adapter", which="last")


def edited_adapter(adapter_dir: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(adapter_dir, copy)
    cfg = json.loads((copy / "adapter_config.json").read_text())
    edit(cfg)
    (copy / "adapter_config.json").write_text(json.dumps(cfg))
    return copy


def drop(path: str):
    def edit(cfg):
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        del node[last]
    return edit


# -- adapters --------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["translator", "translator.type", "shapes", "sharer", "receiver", "sharer.name"])
def test_adapter_config_without_a_required_key_names_it(adapter_dir, tmp_path, key):
    bad = edited_adapter(adapter_dir, tmp_path, drop(key))
    with pytest.raises(AdapterError, match=rf"required key '{key}' is missing.*re-export the adapter"):
        load_adapter(bad)


def test_adapter_config_without_format_version_says_re_export_not_upgrade(adapter_dir, tmp_path):
    bad = edited_adapter(adapter_dir, tmp_path, drop("format_version"))
    with pytest.raises(AdapterError, match="lacks the required key 'format_version'.*re-export") as info:
        load_adapter(bad)
    assert "upgrade" not in str(info.value)


def test_adapter_config_that_is_a_json_list_is_refused(adapter_dir, tmp_path):
    bad = tmp_path / "list"
    shutil.copytree(adapter_dir, bad)
    (bad / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(AdapterError, match="must hold a JSON object, got list"):
        load_adapter(bad)


def test_cli_with_an_incomplete_adapter_prints_one_line(adapter_dir, tmp_path, capsys):
    bad = edited_adapter(adapter_dir, tmp_path, drop("shapes"))
    assert main(["send", str(bad), "--context", "hello"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'shapes'" in err and err.count("\n") == 1


@pytest.mark.parametrize("dtype", ["bogus", "fp16", "int8"])
def test_load_adapter_with_an_unknown_dtype_lists_the_accepted_ones(adapter_dir, dtype):
    with pytest.raises(AdapterError, match=rf"dtype='{dtype}' is not supported; use one of float32, bfloat16, float16"):
        load_adapter(adapter_dir, dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_adapter_on_a_missing_cuda_device_is_refused(adapter_dir):
    with pytest.raises(AdapterError, match="no CUDA device is available here.*device='cpu'"):
        load_adapter(adapter_dir, device="cuda")


def test_sharer_that_overflows_to_inf_is_an_error_not_an_empty_answer(adapter_dir):
    adapter = load_adapter(adapter_dir)
    assert isinstance(adapter.generate("What is 1 + 1?", max_new_tokens=2), str)
    with torch.no_grad():  # what float16 does to some models: activations overflow to inf
        adapter.sharer.model.get_input_embeddings().weight.fill_(float("inf"))
    with pytest.raises(AdapterError, match="sharer 0's KV cache holds NaN or infinite values.*dtype='float32'"):
        adapter.generate("What is 1 + 1?", max_new_tokens=2)
    assert adapter.generate("What is 1 + 1?", max_new_tokens=2, fuse=False) is not None  # the receiver alone still runs


def test_finite_cache_check_passes_finite_views_through():
    from types import SimpleNamespace

    view = SimpleNamespace(keys=[torch.zeros(1, 1, 2, 2)], values=[torch.ones(1, 1, 2, 2)])
    assert check_finite_cache(0, view) is view
    view.values[0][0, 0, 1, 1] = float("nan")
    with pytest.raises(AdapterError, match="layer 0"):
        check_finite_cache(0, view)


# -- recipes ---------------------------------------------------------------------------------------
def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BASE = """
    sharer: gemma3-270m
    receiver: smollm2-135m-instruct
    translator: {type: lcf_lowrank, rank: 8}
"""


def test_negative_lr_names_the_section_once(tmp_path):
    with pytest.raises(RecipeError) as info:
        validate_recipe(load_recipe(write(tmp_path, BASE + "    trainer: {lr: -1.0}\n")))
    assert str(info.value).startswith("trainer: lr must be > 0") and "trainer: trainer:" not in str(info.value)


def test_validate_reports_every_problem_not_only_the_first(tmp_path, capsys):
    path = write(tmp_path, BASE.replace("rank: 8", "rank: 8, rnak: 3") + "    trainer: {lr: -1.0}\n    tarinr: 1\n")
    with pytest.raises(RecipeError) as info:
        validate_recipe(load_recipe(path))
    assert len(info.value.problems) == 3
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "3 problems" in err and "rnak" in err and "lr must be > 0" in err and "tarinr" in err


def test_recipe_with_an_unknown_model_card_suggests_one(tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, BASE.replace("gemma3-270m", "gemma3-207m")))]) == 1
    assert "Did you mean 'gemma3-270m'" in capsys.readouterr().err


# -- data files ------------------------------------------------------------------------------------
def test_missing_data_file_names_every_way_to_set_the_data_root(tmp_path):
    from lcf.data.instruct import DataFileNotFoundError, resolve_data_file

    with pytest.raises(DataFileNotFoundError) as info:
        resolve_data_file("nope.json", data_root=str(tmp_path))
    text = str(info.value)
    assert "--data-root DIR" in text and "data_root" in text and "LCF_DATA_ROOT" in text


def test_data_file_that_is_not_json_names_file_and_line(tiny_pair, tmp_path):  # noqa: F811
    root = tmp_path / "data"
    root.mkdir()
    (root / "data.json").write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    path = recipe(tiny_pair, tmp_path / "runs")
    path.write_text(path.read_text().replace(f"data_root: {tiny_pair}", f"data_root: {root}"))
    with pytest.raises(LCFError, match="data.json line 2: not valid JSON"):
        train(path)


# -- models and devices ----------------------------------------------------------------------------
def test_model_directory_without_weights_is_refused(tiny_pair, tmp_path):  # noqa: F811
    from lcf.models import load_model

    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(LCFError, match="is not an HF model directory: it has no config.json"):
        load_model(str(empty))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_training_on_a_missing_gpu_is_a_recipe_error(tiny_pair, tmp_path):  # noqa: F811
    with pytest.raises(LCFError, match="trainer: .*not available.*trainer.accelerator=cpu"):
        train(recipe(tiny_pair, tmp_path / "runs"), ["trainer.accelerator=cuda"])


def test_resume_from_a_truncated_checkpoint_is_refused(tiny_pair, tmp_path):  # noqa: F811
    path = recipe(tiny_pair, tmp_path / "runs")
    run = train(path, ["trainer.max_steps=2"])
    last = run / "ckpt" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(LCFError, match="last.ckpt.*truncated or corrupted"):
        train(path, ["trainer.max_steps=4"], resume=True)


@pytest.mark.real
def test_real_sharer_in_float16_trips_the_finite_check_and_float32_does_not(real_sharer):
    """The case behind the check: Gemma-3-270M's cache overflows in float16 on CPU."""
    from lcf.communicator import positions_from_mask
    from lcf.models import load_model
    from lcf.models.kv import prefill
    from tests.conftest import REAL_SHARER

    def view(lm):
        tok = lm.tokenizer
        ids = torch.tensor([tok("Name three primary colours, please.")["input_ids"]])
        mask = torch.ones_like(ids)
        return prefill(lm.model, ids, attention_mask=mask, position_ids=positions_from_mask(mask))

    assert check_finite_cache(0, view(real_sharer)) is not None  # float32: finite
    with pytest.raises(AdapterError, match="NaN or infinite values .*dtype float16.*dtype='float32'"):
        check_finite_cache(0, view(load_model(REAL_SHARER, dtype="float16")))


def test_load_model_with_an_unknown_dtype_lists_the_accepted_ones(tiny_pair):  # noqa: F811
    from lcf.models import load_model

    with pytest.raises(LCFError, match="dtype 'bogus' is not a model dtype lcf loads; use one of float32, bfloat16"):
        load_model(str(tiny_pair / "receiver"), dtype="bogus")


# -- adapters composed with a receiver LoRA ------------------------------------------------------------
@pytest.fixture(scope="module")
def composed_dir(tiny_pair, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("rel_composed")
    extra = "receiver_adapter: {type: lora, rank: 2}\n"
    run = train(recipe(tiny_pair, out / "runs", "type: gated_fusion", extra=extra), ["trainer.max_steps=2"])
    return export(run, out / "adapter", which="last")


def _damage_lora(how: str, folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    lora = folder / "receiver_lora"
    weights = lora / "adapter_model.safetensors"
    if how == "missing":
        shutil.rmtree(lora)
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how in ("nan", "dropped"):
        state = load_file(weights)
        first = sorted(state)[0]
        if how == "nan":
            state[first] = torch.full_like(state[first], float("nan"))
        else:
            del state[first]
        save_file(state, weights)
    elif how == "dora":
        cfg = json.loads((lora / "adapter_config.json").read_text())
        (lora / "adapter_config.json").write_text(json.dumps(cfg | {"use_dora": True}))
    elif how == "escaping":
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg["receiver_adapter"]["folder"] = "../elsewhere"
        (folder / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("how, message", [
    ("missing", "is missing: the adapter is composed with a receiver LoRA kept there"),
    ("truncated", "adapter_model.safetensors is missing, truncated or corrupted"),
    ("nan", "do not fit this receiver: .*non-finite \\['base_model.model."),
    ("dropped", "do not fit this receiver: missing \\['base_model.model."),
    ("dora", "use_dora=True is not supported by lcf's LoRA reader"),
    ("escaping", "receiver_adapter must be \\{type: lora, folder: receiver_lora"),
])
def test_damaged_receiver_lora_of_a_composed_adapter_is_refused(composed_dir, tmp_path, how, message):
    copy = tmp_path / "damaged"
    shutil.copytree(composed_dir, copy)
    _damage_lora(how, copy)
    with pytest.raises(AdapterError, match=message):
        load_adapter(copy)


def test_staged_init_from_a_folder_without_a_lora_names_what_it_expects(tiny_pair, tmp_path):  # noqa: F811
    extra = "receiver_adapter: {type: lora, rank: 2, lr_scale: 0.0}\ninit: {receiver_adapter: %s}\n" % tmp_path
    with pytest.raises(AdapterError, match="holds no PEFT LoRA .* give an `lcf train-lora` run folder"):
        train(recipe(tiny_pair, tmp_path / "runs", "type: gated_fusion", extra=extra))
