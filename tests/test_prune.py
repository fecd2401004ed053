"""Gates that learn (own learning rate, sparsity penalty, logged values) and `lcf prune` on tiny models."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from lcf.cli import main
from lcf.errors import LCFError
from lcf.export import export
from lcf.prune import choose_layers, prune_adapter
from lcf.runtime import load_adapter
from lcf.training.run import train
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (tiny_pair is a fixture)

GATES = ["trainer.gate_lr=0.5", "losses=[{type: response_ce}, {type: gate_sparsity, weight: 5.0, target_open: 0.0}]"]


@pytest.fixture(scope="module")
def gated_run(tiny_pair, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("gated")
    return train(recipe(tiny_pair, out / "runs"), GATES)


def test_gates_learn_at_their_own_rate_and_are_logged(gated_run):
    rows = list(csv.DictReader((gated_run / "logs" / "metrics.csv").open()))
    opens = [float(r["gates/mean_open"]) for r in rows if r.get("gates/mean_open")]
    assert opens[0] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=1e-4)  # the initial logit +1
    # lr 0.01 alone would move a logit by at most ~0.04 in 4 Adam steps; at gate_lr 0.5 the penalty closes them
    assert opens[-1] < opens[0] - 0.05
    assert any(r.get("train/gate_penalty") for r in rows) and any(r.get("train/response_loss") for r in rows)
    assert any(r.get("gates/r0_k") for r in rows)


def test_gate_parameters_get_their_own_optimizer_group(tiny_pair, tmp_path):  # noqa: F811
    from lcf.communicator import Communicator
    from lcf.config import load_recipe, validate_recipe
    from lcf.pair import build_pair
    from lcf.training.module import LCFModule
    from lcf.training.run import build_translator
    from lcf.training.settings import TrainerSettings

    r = validate_recipe(load_recipe(recipe(tiny_pair, tmp_path), GATES))
    pair = build_pair(r)
    tr = build_translator(r, pair)
    module = LCFModule(Communicator(pair.receiver.model, [pair.sharer.model], [tr]), TrainerSettings(**r["trainer"]))
    groups = module.configure_optimizers()["optimizer"].param_groups
    gate_ids = {id(p) for p in tr.gates.parameters()}
    assert [g["lr"] for g in groups] == [0.01, 0.01, 0.5]
    assert {id(p) for p in groups[2]["params"]} == gate_ids and groups[2]["weight_decay"] == 0.0
    assert not gate_ids & {id(p) for g in groups[:2] for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len([p for p in tr.parameters() if p.requires_grad])


def test_prune_keeps_the_highest_gates_and_leaves_other_layers_alone(gated_run, tmp_path):
    full_dir = export(gated_run, tmp_path / "full", which="last")
    full = load_adapter(full_dir)
    scores = {t: max(v) for t, v in full.translator.gate_values().items()}
    best = max(scores, key=lambda t: (scores[t], -t))
    assert main(["prune", str(full_dir), str(tmp_path / "p1"), "--keep", "1"]) == 0
    cfg = json.loads((tmp_path / "p1" / "adapter_config.json").read_text())
    assert cfg["translator"]["args"]["active_layers"] == [best]
    assert cfg["size_bytes"] < json.loads((full_dir / "adapter_config.json").read_text())["size_bytes"]
    assert cfg["training"]["pruned"]["kept"] == [best] and cfg["training"]["pruned"]["scores"]
    pruned = load_adapter(tmp_path / "p1")  # the runtime builds the pruned architecture and loads it strictly
    assert pruned.translator.active_layers == [best]
    with torch.no_grad():
        open_all = {t: (torch.ones(2) * 5.0) for t in full.translator.active_layers}  # open every kept gate
        for tr in (full.translator, pruned.translator):
            for t in tr.active_layers:
                tr.gates.logits[str(t)].data.copy_(open_all[t])
        batch = pruned.encode(["What is 2 + 3?", "What is 6 + 1?"])
        base = pruned.communicator.fused_prompt_cache(batch, fuse=False)
        fused_p = pruned.communicator.fused_prompt_cache(batch)
        fused_f = full.communicator.fused_prompt_cache(batch)
    for t in range(base.num_layers):
        if t != best:  # a pruned layer: the receiver's own cache
            assert torch.equal(fused_p.keys[t], base.keys[t]) and torch.equal(fused_p.values[t], base.values[t])
        else:  # the kept layer: exactly what the unpruned adapter does there
            assert torch.allclose(fused_p.keys[t], fused_f.keys[t]) and torch.allclose(fused_p.values[t], fused_f.values[t])


def test_prune_arguments(gated_run, tmp_path):
    assert choose_layers({0: 0.2, 1: 0.9, 2: 0.9}, keep=2) == [1, 2]
    assert choose_layers({0: 0.2, 1: 0.9, 2: 0.6}, threshold=0.5) == [1, 2]
    assert choose_layers({0: 0.5, 1: 0.5}, keep=1) == [0]  # ties: the lower layer
    with pytest.raises(LCFError, match="exactly one of --keep"):
        choose_layers({0: 0.2}, keep=1, threshold=0.1)
    with pytest.raises(LCFError, match="between 1 and the 2 layers"):
        choose_layers({0: 0.2, 1: 0.3}, keep=3)
    with pytest.raises(LCFError, match="the highest is 0.3000"):
        choose_layers({0: 0.2, 1: 0.3}, threshold=0.9)
    full_dir = export(gated_run, tmp_path / "full", which="last")
    with pytest.raises(LCFError, match="is the adapter itself"):
        prune_adapter(full_dir, full_dir, keep=1)
