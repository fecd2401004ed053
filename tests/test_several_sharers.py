"""Several sharers end to end on tiny models: recipe validation, training, one adapter holding every
translator, runtime loading and generation; the one-sharer format stays as it was."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lcf.config import load_recipe, validate_recipe
from lcf.errors import RecipeError
from lcf.export import export
from lcf.runtime import AdapterError, load_adapter
from lcf.several import sharer_entries
from lcf.training.run import train
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (module fixture)

REPO = Path(__file__).resolve().parent.parent


def several_recipe(root: Path, out: Path, extra: str = "") -> Path:
    text = f"""
        name: tiny-two
        seed: 0
        receiver: {root / 'receiver'}
        output_dir: {out}
        data_root: {root}
        translator: {{type: lcf_lowrank, rank: 8}}
        sharers:
          - {{model: {root / 'sharer'}, layer_map: {{type: nearest}}}}
          - model: {root / 'receiver'}
            translator: {{type: gated_fusion}}
            layer_map: {{type: terminal}}
            templates: {{sharer: plain}}
        data: {{type: instruct_json, files: [data.json], val_size: 4, max_prompt_tokens: 200, max_response_tokens: 16}}
        trainer: {{max_steps: 4, batch_size: 4, lr: 0.01, val_every_n_steps: 2, checkpoint_every_n_steps: 2,
                  accelerator: cpu, devices: 1, progress: none, log_every_n_steps: 1}}
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / "two.yaml"
    path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    return path


def test_two_sharer_recipe_validates_and_fills_defaults(tiny_pair, tmp_path):  # noqa: F811
    data = validate_recipe(load_recipe(several_recipe(tiny_pair, tmp_path)))
    entries = sharer_entries(data)
    assert [e["translator"]["type"] for e in entries] == ["lcf_lowrank", "gated_fusion"]
    assert [e["layer_map"]["type"] for e in entries] == ["nearest", "terminal"]
    assert [e["sharer_template"] for e in entries] == ["auto", "plain"]
    assert entries[1]["token_alignment"] == {"type": "maximal_coverage"}
    ranked = sharer_entries(validate_recipe(load_recipe(several_recipe(tiny_pair, tmp_path),
                                                        ["sharers.0.translator.rank=4"])))
    assert ranked[0]["translator"] == {"type": "lcf_lowrank", "rank": 4}  # the inherited translator, updated
    one = validate_recipe(load_recipe(recipe(tiny_pair, tmp_path / "one")))
    assert len(sharer_entries(one)) == 1 and sharer_entries(one)[0]["model"] == one["sharer"]


@pytest.mark.parametrize("override, message", [
    ("sharer=x", "both `sharer:` and `sharers:`"),
    ("sharers.1.modle=x", "sharers[1].modle: unknown key. Did you mean 'model'?"),
    ("sharers.0.translator.type=nope", "sharers[0].translator.type"),
    ("sharers.1.templates.sharer=fancy", "sharers[1].templates.sharer"),
    ("compressor.type=span_pool", "cross-context recipes take one sharer"),
    ("sharers.1.translator.rnak=4", "sharers[1].translator"),
    ("sharers.0.translator.rnak=4", "sharers[0].translator.rnak: LowRankJointKV has no argument 'rnak'"),
])
def test_bad_sharers_are_refused_with_the_place(tiny_pair, tmp_path, override, message):  # noqa: F811
    with pytest.raises(RecipeError) as err:
        validate_recipe(load_recipe(several_recipe(tiny_pair, tmp_path), [override]))
    assert message in str(err.value)


def test_shipped_two_sharer_recipe_validates():
    data = validate_recipe(load_recipe(REPO / "recipes" / "two_sharers.yaml"))
    assert [e["model"] for e in sharer_entries(data)] == ["gemma3-270m", "smollm2-135m-instruct"]
    assert data["receiver"] == "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def two_sharer_adapter(tiny_pair, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("two_sharers")
    run = train(several_recipe(tiny_pair, out))
    return export(run, out / "adapter", which="last"), run


def test_train_export_load_generate_with_two_sharers(two_sharer_adapter):
    folder, run = two_sharer_adapter
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert len(cfg["sharers"]) == 2 and cfg["translator"]["type"] == "lcf_lowrank"
    assert [s["translator"]["type"] for s in cfg["sharers"]] == ["lcf_lowrank", "gated_fusion"]
    assert cfg["num_parameters"] == sum(s["num_parameters"] for s in cfg["sharers"])
    with safe_open(str(folder / "adapter.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(("sharers.0.", "sharers.1.")) for k in keys)
    assert any(k.startswith("sharers.1.") for k in keys)
    # the exported weights are the trained ones, translator by translator
    ckpt = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    with safe_open(str(folder / "adapter.safetensors"), "pt") as f:
        for k in keys:
            i, rest = k.split(".", 2)[1], k.split(".", 2)[2]
            assert torch.equal(f.get_tensor(k), ckpt[f"communicator.translators.{i}.{rest}"])
    adapter = load_adapter(folder)
    assert len(adapter.communicator.sharers) == 2 and len(adapter.more_sharers) == 1
    batch = adapter.encode(["What is 2 + 3?", "What is 1 + 1?"])
    assert len(batch["sharers"]) == 2
    assert not torch.equal(batch["sharers"][0]["prompt_ids"][:, -3:], batch["sharers"][1]["prompt_ids"][:, -3:])
    prompts = ["What is 2 + 3?", "What is 6 + 1?"]
    texts = adapter.generate(prompts, max_new_tokens=5)
    inputs = adapter.generation_inputs(prompts)
    tok = adapter.receiver.tokenizer
    out = adapter.receiver.model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert [t.strip() for t in tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)] == texts
    # the second sharer matters: an all-zero cache for sharer 1 alone changes the fused receiver cache
    comm = adapter.communicator
    full = comm.fused_prompt_cache(batch)
    def zero_second(i, view):
        return view.__class__([k * 0 for k in view.keys], [v * 0 for v in view.values], view.seq_len, view.specs) \
            if i == 1 else view
    partial = comm.fused_prompt_cache(batch, sharer_transform=zero_second)
    assert any(not torch.equal(a, b) for a, b in zip(full.keys, partial.keys))
    card = (folder / "README.md").read_text()
    assert "sharer 0" in card and "sharer 1" in card and "gated_fusion" in card


def test_several_sharer_adapter_refuses_wrong_models_and_counts(two_sharer_adapter, tiny_pair):  # noqa: F811
    folder, _ = two_sharer_adapter
    with pytest.raises(AdapterError, match="sharer 1"):
        load_adapter(folder, sharer=[None, str(tiny_pair / "sharer")])  # sharer 1 is the receiver model
    with pytest.raises(AdapterError, match="2 sharers"):
        load_adapter(folder, sharer=[None, None, None])


@pytest.fixture(scope="module")
def one_sharer_adapter(tiny_pair, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("one_sharer")
    run = train(recipe(tiny_pair, out))
    return export(run, out / "adapters" / "tiny"), run


def test_one_sharer_adapter_files_keep_their_format(one_sharer_adapter):
    folder, run = one_sharer_adapter
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert "sharers" not in cfg and "combine" not in cfg
    with safe_open(str(folder / "adapter.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any(k.startswith("sharers.") for k in keys)
    ckpt = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert {f"communicator.translators.0.{k}" for k in keys} <= set(ckpt)


def test_export_writes_an_adapter_card(one_sharer_adapter):
    folder, _ = one_sharer_adapter
    cfg = json.loads((folder / "adapter_config.json").read_text())
    card = (folder / "README.md").read_text()
    assert card.startswith("# lcf adapter: tiny")
    assert f"| parameters | {cfg['num_parameters']:,} (" in card and "lcf_lowrank (rank=8" in card
    assert "| training | 4 steps of batch 4, lr 0.01" in card and "data.json" in card
    assert f'adapter = load_adapter("{folder}")' in card
    assert "## Gates" in card and "K open" in card and "No scores yet" in card
    # the load snippet in the card runs as written
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(snippet.replace('max_new_tokens=48', 'max_new_tokens=2'), scope)
    assert scope["adapter"].config["num_parameters"] == cfg["num_parameters"]


def fake_results(label: str) -> dict:
    systems = {"receiver": {"kind": "receiver"}, label: {"adapter": label, "control": "none"},
               f"{label} (zero)": {"adapter": label, "control": "zero"},
               f"{label} (mismatched)": {"adapter": label, "control": "mismatched"}}
    acc = {"receiver": 0.25, label: 0.40, f"{label} (zero)": 0.30, f"{label} (mismatched)": 0.35}
    return {"systems": systems, "tasks": {"arc_easy": {"metric": "accuracy", "n": 20}},
            "scores": {k: {"arc_easy": {"accuracy": v, "primary": v}} for k, v in acc.items()}}


def test_card_scores_and_adapter_listing(one_sharer_adapter, two_sharer_adapter, tmp_path, capsys):
    import shutil

    from lcf.cli import main
    from lcf.cli.adapters import write_cards
    from lcf.export_card import adapter_rows, read_scores

    root = tmp_path / "adapters"
    shutil.copytree(one_sharer_adapter[0], root / "tiny")
    shutil.copytree(two_sharer_adapter[0], root / "two" / "adapter")
    for _ in range(2):  # a second evaluation replaces the first one's section
        write_cards(fake_results("tiny"), [root / "tiny"], ["tiny"])
    card = (root / "tiny" / "README.md").read_text()
    assert card.count("## Scores") == 1 and "No scores yet" not in card
    assert "| arc_easy | accuracy | 20 | 25.0 | 40.0 | 30.0 | 35.0 |" in card
    assert read_scores(root / "tiny")["headline"]["value"] == pytest.approx(0.40)
    rows = {Path(r["path"]).relative_to(root).as_posix(): r for r in adapter_rows(root)}
    assert rows["tiny"]["score"] == pytest.approx(0.40) and rows["two/adapter"]["score"] is None
    assert len(rows["two/adapter"]["sharers"]) == 2
    assert main(["list", "--adapters", str(root)]) == 0
    out = capsys.readouterr().out
    assert "40.0 (mean of 1" in out and "none yet" in out and "lcf_lowrank+gated_fus" in out
    with pytest.raises(KeyError, match="no system of adapter 'other'"):
        write_cards(fake_results("tiny"), [root / "tiny"], ["other"])


@pytest.mark.real
@pytest.mark.slow
def test_two_sharers_on_the_real_models(tmp_path, data_root, real_receiver, real_sharer):
    """Gemma-3-270M and SmolLM2-135M-Instruct itself feed SmolLM2: recipes/two_sharers.yaml for two steps,
    one exported adapter, loaded back with both sharers; greedy generate through receiver.generate agrees.
    Slow (-m slow): the default run covers the same on the tiny pair (test_train_export_load_generate_with_two_sharers),
    validates the recipe (tests/test_recipes.py) and trains one-sharer recipes on the real pair."""
    overrides = [f"output_dir={tmp_path}", f"data_root={data_root}", "trainer.max_steps=2", "trainer.batch_size=2",
                 "trainer.val_every_n_steps=2", "trainer.log_every_n_steps=1", "trainer.progress=none",
                 "data.train_size=4", "data.val_size=2"]
    run = train(REPO / "recipes" / "two_sharers.yaml", overrides)
    folder = export(run, tmp_path / "adapter", which="last")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert [s["sharer"]["name"] for s in cfg["sharers"]] == ["gemma3-270m", "smollm2-135m-instruct"]
    assert [len(s["layer_map"]["sharer_of"]) for s in cfg["sharers"]] == [30, 30]
    adapter = load_adapter(folder, sharer=[real_sharer, real_receiver], receiver=real_receiver)
    assert len(adapter.communicator.sharers) == 2
    prompt = "What is the capital of France?"
    text = adapter.generate(prompt, max_new_tokens=6)
    inputs = adapter.generation_inputs(prompt)
    tok = adapter.receiver.tokenizer
    out = adapter.receiver.model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                          pad_token_id=tok.pad_token_id or tok.eos_token_id)
    assert tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() == text
    assert "sharer 1 | smollm2-135m-instruct" in (folder / "README.md").read_text()


def test_cli_eval_card_writes_scores_with_controls(one_sharer_adapter, tmp_path, capsys):
    import shutil

    from lcf.cli import main
    from lcf.export_card import read_scores
    from tests.test_eval_harness import ARC_ROWS, write_jsonl

    folder = tmp_path / "tiny"
    shutil.copytree(one_sharer_adapter[0], folder)
    write_jsonl(tmp_path / "tasks" / "arc/ARC-Easy-validation.jsonl", ARC_ROWS)
    rc = main(["eval", str(folder), "--tasks", "arc_easy", "--limit", "3", "--out", str(tmp_path / "report"),
               "--data-root", str(tmp_path / "tasks"), "--systems", "receiver", "adapter", "zero", "mismatched",
               "--latency-runs", "1", "--no-progress", "--card"])
    assert rc == 0 and f"scores written into {folder / 'README.md'}" in capsys.readouterr().out
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    row = read_scores(folder)["tasks"]["arc_easy"]
    assert row["n"] == 3 and set(row) >= {"receiver alone", "adapter", "zero cache", "another item's cache"}
    assert row["adapter"] == results["scores"]["tiny"]["arc_easy"]["primary"]
    assert row["zero cache"] == results["scores"]["tiny (zero)"]["arc_easy"]["primary"]
    assert "| arc_easy |" in (folder / "README.md").read_text()


def test_one_sharer_commands_refuse_a_sharers_recipe():
    from lcf.pair import build_pair

    data = validate_recipe(load_recipe(REPO / "recipes" / "two_sharers.yaml"))
    with pytest.raises(RecipeError, match="lists 2 `sharers:`"):
        build_pair(data)  # refused before any model is loaded (lcf inspect, train-lora)
