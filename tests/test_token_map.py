"""The per-token map as a framework method: recipe -> `lcf train` (init stage + Lightning) -> `lcf export` ->
`load_adapter` -> send / receive; its init section, loss weights, mixed data, resume and refusals."""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lcf.config import load_recipe, validate_recipe
from lcf.data.xc.features import XCExample
from lcf.errors import LCFError, RecipeError
from lcf.export import export
from lcf.registry import translators
from lcf.runtime import TokenAdapter, load_adapter
from lcf.token_map.init import load_map
from lcf.token_map.ridge import Ridge
from lcf.token_map.rows import TokenRows
from lcf.training.loss import build_losses
from lcf.training.run import train
from tests.conftest import REPO, tiny_llama
from tests.test_resume import KILLER
from tests.test_train_export import write_tiny_pair

CONTEXTS = [
    "Ada Lindqvist moved to Tromso a few years ago. She works as a luthier.",
    "Bo Renner keeps three goats and a cat called Pilsner on a farm near Ghent.",
    "The locker assigned to Cleo Marsh is number 556; her home town is Jakarta.",
    "Dario Vesk repairs clocks in Trieste and sings in a choir on Sundays.",
    "Emi Tanaka grew up in Osaka, studied chemistry, and now teaches in Leeds.",
]


def recipe(root: Path, out: Path, extra: str = "") -> Path:
    text = f"""
        name: tok
        seed: 0
        sharer: {root / 'sharer'}
        receiver: {root / 'receiver'}
        output_dir: {out}
        translator: {{type: token_map, rank: 8}}
        init:
          type: ridge
          held: 4
          fit: [{{type: fact_transfer, num_train: 40, num_val: 4, items: 24}}]
        losses: [{{type: answer_ce}}, {{type: rows_mse, weight: 0.5}}]
        data:
          type: xc_mix
          val_items: 4
          sets: [{{type: fact_transfer, num_train: 30, num_val: 4, seed: 1, items: 12}},
                 {{type: fact_transfer, values: open, num_train: 30, num_val: 4, seed: 2, items: 8}}]
        trainer: {{max_steps: 6, batch_size: 4, lr: 0.01, lr_schedule: constant, weight_decay: 0.0,
                  warmup_ratio: 0.0, val_every_n_steps: 3, checkpoint_every_n_steps: 2, accelerator: cpu,
                  devices: 1, progress: none, log_every_n_steps: 1, threads: 1}}
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recipe_in.yaml"
    path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    return path


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """The tiny pair with a sharer window of 16: the sharer's rows of a context are still captured chunk by chunk
    (15 tokens a pass), in a fifth of the forward passes that window 4 takes (tests/test_token_rows.py checks the
    capture itself at window 4)."""
    return write_tiny_pair(tmp_path_factory.mktemp("token_pair"), sharer_window=16)


@pytest.fixture(scope="module")
def trained(tiny_pair, tmp_path_factory):
    """One 8-step run of :func:`recipe` (ridge init, then Lightning), shared by the tests that read a finished
    run; a test that needs to change a run copies what it changes."""
    return train(recipe(tiny_pair, tmp_path_factory.mktemp("trained")), ["trainer.max_steps=8"])


def step_losses(metrics_csv: Path) -> dict[int, float]:
    with open(metrics_csv) as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_shipped_recipes_validate_and_the_component_is_listed():
    assert "token_map" in translators.names()
    for name in ("xc_token.yaml", "xc_token_stage2.yaml"):
        recipe_ = validate_recipe(load_recipe(REPO / "recipes" / name))
        assert recipe_["translator"]["type"] == "token_map"
        weights = [(t.name, t.weight) for t in build_losses(recipe_)]
        assert weights == [("answer_ce", 1.0), ("rows_mse", 1.0)]  # the weights of the mapping form they replace
    second = validate_recipe(load_recipe(REPO / "recipes" / "xc_token_stage2.yaml"))
    assert set(second["init"]) == {"from"}  # the stage's `from` replaces the ridge section, not merged into it
    assert [s["items"] for s in second["data"]["sets"]] == [300, 300]
    out = subprocess.run([sys.executable, "-m", "lcf.cli", "list"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0 and "token_map" in out.stdout and "xc_mix" in out.stdout


@pytest.mark.parametrize("override, message", [
    ("init.fit.0.itemz=3", "init.fit\\[0\\].itemz: FactTransferData has no argument 'itemz'"),
    ("init.helt=3", "init.helt: unknown key. Did you mean 'held'"),
    ("init.held=0", "init.held: at least one held-out context"),
    ("init.type=svd", "init.type: expected 'ridge'"),
    ("losses.0.type=answer_cee", "losses\\[0\\].type: unknown loss 'answer_cee'. Did you mean 'answer_ce'"),
    ("losses.1.weight=-1", "losses\\[1\\] \\(rows_mse\\): weight must be a finite number >= 0"),
    ("losses.1.wieght=1", "losses\\[1\\].wieght: RowsMSE has no argument 'wieght'. Did you mean 'weight'"),
    ("losses=[{type: response_ce}]", "losses\\[0\\] \\(response_ce\\): this term serves a fused translator"),
    ("losses={answer_ce: 1.0, rows_mse: 1.0}", "losses: expected a list of loss components, e.g. `losses: "
                                               "\\[\\{type: answer_ce, weight: 1.0\\}"),
    ("data.sets.1.items=0", "data.sets\\[1\\].items: must be an int >= 1"),
    ("data.sets.0.num_trian=3", "data.sets\\[0\\].num_trian"),
    ("translator.rnak=3", "translator.rnak"),
    ("trainer.lr_schedule=cosine", "lr_schedule"),
])
def test_validate_catches_a_wrong_key_or_value(override, message):
    with pytest.raises(RecipeError, match=message):
        validate_recipe(load_recipe(REPO / "recipes" / "xc_token.yaml", [override]))


def test_init_belongs_to_a_per_token_translator():
    with pytest.raises(RecipeError, match="belong to translator token_map"):
        validate_recipe(load_recipe(REPO / "recipes" / "xc_token.yaml", ["translator.type=lcf_lowrank"]))


def test_train_export_load_send_receive(trained, tmp_path):
    run = trained
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["translator"] == {"type": "token_map", "rank": 8, "standardize": True}
    assert summary["init"]["type"] == "ridge" and summary["init"]["held_tokens"] > 0
    assert [s["items"] for s in summary["data_sets"]] == [12, 8] and summary["train_examples"] == 20
    assert (run / "init" / "token_map_init.safetensors").is_file()
    metrics = (run / "logs" / "metrics.csv").read_text()
    assert "train/answer_ce" in metrics and "train/rows_mse" in metrics and "val/loss" in metrics
    with open(run / "logs" / "metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("train/loss")]
    for r in logged:  # the recipe's terms, weighted: answer_ce 1 (default) + rows_mse 0.5
        assert float(r["train/loss"]) == pytest.approx(float(r["train/answer_ce"]) + 0.5 * float(r["train/rows_mse"]),
                                                       rel=1e-5)
    folder = export(run, tmp_path / "adapter", which="last")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["translator"] == {"type": "token_map", "args": {"rank": 8, "standardize": True}}
    assert cfg["training"]["init"]["type"] == "ridge" and cfg["training"]["global_step"] == 8
    card = (folder / "README.md").read_text()
    assert "| init | ridge fit on" in card and "sender.send(" in card
    # the exported map is the checkpoint's
    state = torch.load(run / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    adapter = load_adapter(folder)
    assert isinstance(adapter, TokenAdapter) and adapter.kind == "per_token"
    torch.testing.assert_close(adapter.map.down, state["translator.down"])
    # the message is the map's code of the sharer's rows; decoding it gives the map's rows
    item = XCExample(id="0", sharer_context=CONTEXTS[0], question="Where does Ada live?", answers=["Tromso"])
    rows = TokenRows(adapter.receiver.model, adapter.receiver.tokenizer, adapter.sharer.model, adapter.sharer.tokenizer)
    x = rows.sharer_side(item)
    msg = adapter.send(CONTEXTS[0])
    torch.testing.assert_close(msg.codes, adapter.map.encode(x))
    data = msg.to_bytes("int8")
    assert isinstance(adapter.receive(data, item.question, max_new_tokens=3), str)
    receiving = load_adapter(folder, with_sharer=False)
    assert receiving.receive(data, item.question, max_new_tokens=3) == adapter.receive(data, item.question,
                                                                                        max_new_tokens=3)


def test_a_second_stage_starts_from_a_run_an_adapter_or_a_file(tiny_pair, trained, tmp_path):
    first = trained
    recipe(tiny_pair, tmp_path / "runs")  # the first stage's recipe, which the second one extends
    from_run, _ = load_map(first)
    folder = export(first, tmp_path / "adapter", which="last")
    from_adapter, training = load_map(folder)
    torch.testing.assert_close(from_run.up, from_adapter.up)
    assert training["global_step"] == 8
    stage = tmp_path / "runs" / "stage2.yaml"  # a second recipe on top of the first, as the shipped stage 2 is
    stage.write_text(f"defaults: [recipe_in.yaml]\nname: tok2\ninit: {{from: {folder}}}\n")
    second = train(stage, ["trainer.max_steps=2"])
    summary = json.loads((second / "summary.json").read_text())
    assert summary["init"]["from"] == str(folder) and summary["init"]["before"]["global_step"] == 8
    assert not (second / "init").exists()  # nothing was fitted
    with pytest.raises(LCFError, match="neither a run folder"):
        load_map(tmp_path / "nothing")
    stage.write_text("defaults: [recipe_in.yaml]\nname: tok3\ninit: {from: elsewhere}\n")
    with pytest.raises(LCFError, match="neither a run folder"):
        train(stage, ["trainer.max_steps=1"])


def test_a_second_stage_at_a_lower_rank_starts_from_the_cut_map(tiny_pair, trained, tmp_path):
    first = trained
    recipe(tiny_pair, tmp_path / "runs")
    stage = tmp_path / "runs" / "low.yaml"
    stage.write_text(f"defaults: [recipe_in.yaml]\nname: low\ntranslator: {{type: token_map, rank: 4}}\n"
                     f"init: {{from: {first}}}\n")
    with pytest.raises(RecipeError, match="cut_on"):  # a rank-8 map does not fit a rank-4 translator as it is
        train(stage, ["trainer.max_steps=1"])
    stage.write_text(f"defaults: [recipe_in.yaml]\nname: low\ntranslator: {{type: token_map, rank: 4}}\n"
                     f"init: {{from: {first}, cut_on: [{{type: fact_transfer, num_train: 40, num_val: 4, "
                     f"items: 6}}]}}\n")
    low = train(stage, ["trainer.max_steps=1"])
    cut = json.loads((low / "summary.json").read_text())["init"]["cut"]
    assert (cut["rank_from"], cut["rank"], cut["contexts"]) == (8, 4, 6) and 0 < cut["energy_kept"] <= 1


def test_the_cut_is_the_least_squares_rank_k_map_on_its_codes():
    from lcf.runtime.token_kv import LowRank
    from lcf.token_map.cut import cut

    torch.manual_seed(0)
    low = LowRank(torch.randn(12, 6), torch.randn(6, 10), torch.zeros(12), torch.ones(12), torch.zeros(10))
    x = torch.randn(500, 12) * torch.linspace(3, 0.1, 12)
    full = low.decode(low.encode(x))
    same, info = cut(low, low.encode(x), 6)
    torch.testing.assert_close(same.decode(same.encode(x)), full, rtol=1e-4, atol=1e-3)
    assert info["energy_kept"] == pytest.approx(1.0)
    k3, _ = cut(low, low.encode(x), 3)
    u, s, v = torch.linalg.svd(low.down @ low.up, full_matrices=False)
    naive = x @ (u[:, :3] * s[:3]) @ v[:3]  # the plain SVD cut of the product ignores the data
    assert ((k3.decode(k3.encode(x)) - full) ** 2).mean() < ((naive - full) ** 2).mean()
    with pytest.raises(LCFError, match="rank must be"):
        cut(low, low.encode(x), 7)


def test_a_repeated_run_loads_the_stored_init_instead_of_fitting(tiny_pair, trained, tmp_path, monkeypatch):
    path = recipe(tiny_pair, tmp_path / "runs")
    shutil.copytree(trained / "init", tmp_path / "runs" / "tok" / "init")  # what an earlier run of this recipe left
    import lcf.token_map.init as init

    def refuse(*args, **kwargs):
        raise AssertionError("the ridge was fitted again")

    monkeypatch.setattr(init, "fit_ridge", refuse)
    again = train(path, ["trainer.max_steps=1", "name=tok"])
    assert json.loads((again / "summary.json").read_text())["init"]["reused"] is True
    with pytest.raises(AssertionError, match="fitted again"):  # another init section: fitted anew
        train(path, ["trainer.max_steps=1", "init.held=5"])


def test_killed_and_resumed_run_matches_uninterrupted_per_step(tiny_pair, trained, tmp_path):
    # 20 items, batch 4: 5 batches an epoch; killed at step 5 (last.ckpt at step 4), resumed to step 8; the
    # uninterrupted run is `trained` (the same recipe and overrides)
    overrides = ["trainer.max_steps=8"]
    whole = trained
    path = recipe(tiny_pair, tmp_path / "killed")
    proc = subprocess.run([sys.executable, "-c", KILLER, "5", str(path), *overrides], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run = tmp_path / "killed" / "tok"
    assert (run / "ckpt" / "last.ckpt").exists() and not (run / "summary.json").exists()
    resumed = train(path, overrides, resume=True)
    want, got = step_losses(whole / "logs" / "metrics.csv"), step_losses(resumed / "logs" / "resume_1" / "metrics.csv")
    assert sorted(got) == [4, 5, 6, 7] and sorted(want) == list(range(8))
    assert [round(got[s], 5) for s in got] == [round(want[s], 5) for s in got]


def test_no_init_and_no_resume_is_refused(tiny_pair, tmp_path):
    path = recipe(tiny_pair, tmp_path / "runs")
    cfg = path.read_text().split("init:")[0] + "losses:" + path.read_text().split("losses:")[1]
    path.write_text(cfg)
    with pytest.raises(RecipeError, match="a token_map starts from a fitted map"):
        train(path)


def test_ridge_recovers_the_identity_and_its_cut_is_exact_at_full_rank(real_receiver_tokenizer):
    model = tiny_llama(vocab_size=len(real_receiver_tokenizer), layers=2).double()
    rows = TokenRows(model, real_receiver_tokenizer, model, real_receiver_tokenizer)
    data = [rows.features(XCExample(id=str(i), sharer_context=c, question="Where?", answers=["x"]))[:2]
            for i, c in enumerate(CONTEXTS)]
    ridge, report = Ridge.fit(iter(data[2:]), data[:2], lambdas=(1e-9, 10.0), chunk=16)
    assert report["lambda"] == 1e-9 and report["r2"]["1e-09"] > 0.999 > report["r2"]["10.0"]
    torch.testing.assert_close(ridge(data[0][0].float()), data[0][1].float(), atol=1e-3, rtol=1e-3)
    full = ridge.cut(ridge.w.shape[0])
    torch.testing.assert_close(full(data[1][0].float()), ridge(data[1][0].float()), atol=1e-4, rtol=1e-4)
    with pytest.raises(LCFError, match="rank must be in"):
        ridge.cut(0)
    with pytest.raises(LCFError, match="needs training rows and held-out rows"):
        Ridge.fit(iter([]), [])


def test_mixed_sets_keep_their_counts_and_are_reproducible():
    from lcf.data.xc.mix import XCMix, pick

    sets = [{"type": "fact_transfer", "num_train": 6, "num_val": 2, "seed": 0, "items": 2},
            {"type": "fact_transfer", "num_train": 6, "num_val": 2, "seed": 1, "values": "open", "items": 5}]
    items, used = pick(sets, "data.sets", None, seed=0)
    assert [u["items"] for u in used] == [2, 5] and len(items) == 7 and all(it.answers for it in items)
    assert [it.id for it in pick(sets, "data.sets", None, seed=0)[0]] == [it.id for it in items]
    train_, val = XCMix(sets, val_items=1).split_examples()
    assert len(train_) == 7 and len(val) == 2
    contexts, _ = pick(sets, "init.fit", None, seed=0, distinct_contexts=True)
    assert len({it.sharer_context for it in contexts}) == len(contexts)
    with pytest.raises(RecipeError, match="non-empty list"):
        XCMix([])
    with pytest.raises(RecipeError, match="not a cross-context dataset"):
        pick([{"type": "instruct_json", "files": ["x.json"]}], "data.sets", None, seed=0)


def test_ddp_two_processes_train_the_token_map(tiny_pair, tmp_path):
    """Two CPU ranks (gloo): the init is fitted once (rank 0, before the other rank starts) and read by both,
    every rank trains on its own shard, rank 0 writes the run's files, and the export loads."""
    from tests.test_distributed import worker_env

    path = recipe(tiny_pair, tmp_path / "runs")
    overrides = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=3"]
    proc = subprocess.run([sys.executable, "-m", "lcf.cli", "train", str(path), *overrides], cwd=REPO,
                          env=worker_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("init: ridge on") == 1  # the other rank loaded the stored init
    run = tmp_path / "runs" / "tok"
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    adapter = load_adapter(export(run, tmp_path / "adapter", which="last"))
    assert adapter.send(CONTEXTS[1]).codes.shape[1] == 8


def test_the_dry_run_counts_the_token_map_without_weights():
    from lcf.dry_run import count_recipe

    count = count_recipe(validate_recipe(load_recipe(REPO / "recipes" / "xc_token.yaml")), "xc_token.yaml")
    assert count.params == 512 * (9216 + 11520) and count.fused_layers == 30  # Gemma-3-270M -> SmolLM2-135M rows
