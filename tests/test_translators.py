"""Translators on tiny random models: shapes, identity at init, masking, gradients, gates, export args.

Tiny pair: Llama-like (2 layers, 2 KV heads x 4, global) and Gemma-3-like (3 layers, 1 KV head x 8,
sliding window 4 on layers 0 and 1, which then store only the last 3 positions).
"""
from __future__ import annotations

import functools
import importlib
import json
import math

import pytest
import torch

from lcf.align.layers import ExplicitLayerMap, NearestLayerMap
from lcf.errors import KVCacheError, RecipeError
from lcf.models.kv import KVView, LayerSpec, prefill
from lcf.registry import translators
from lcf.translators import C2CProjector, GatedFusion, LayerGates, LowRankJointKV, PairShapes, Translator
from lcf.translators.base import annealed_temperature
from tests.conftest import tiny_gemma3, tiny_llama

KINDS = {
    "c2c_projector": (C2CProjector, {"hidden_dim": 16}),
    "lcf_lowrank": (LowRankJointKV, {"rank": 8, "mlp_ratio": 2}),
    "lcf_lowrank:sharer_only": (LowRankJointKV, {"rank": 8, "mlp_ratio": 2, "read_receiver": False}),
    "gated_fusion": (GatedFusion, {}),
}
DIRECTIONS = [("llama", "gemma"), ("gemma", "llama")]
# explicit maps leave one receiver layer unfused; nearest fuses every layer
EXPLICIT = {("llama", "gemma"): [1, None, 0], ("gemma", "llama"): [0, None]}
LENGTHS = [3, 9]  # shorter / longer than the sliding window (4)


@functools.lru_cache(maxsize=None)
def model(name: str):
    return tiny_llama() if name == "llama" else tiny_gemma3()


def make_case(direction, n: int, layer_map: str = "explicit", batch: int = 2, seed: int = 0):
    """(shapes, sharer view, receiver view, align_index, align_mask) for receiver length ``n``."""
    s_name, r_name = direction
    s_model, r_model = model(s_name), model(r_name)
    g = torch.Generator().manual_seed(seed)
    n_s = n + 1
    with torch.no_grad():
        s_view = prefill(s_model, torch.randint(3, 90, (batch, n_s), generator=g))
        r_view = prefill(r_model, torch.randint(3, 90, (batch, n), generator=g))
    s_layers, r_layers = s_model.config.num_hidden_layers, r_model.config.num_hidden_layers
    if layer_map == "explicit":
        lmap = ExplicitLayerMap(EXPLICIT[direction])(s_layers, r_layers)
    else:
        lmap = NearestLayerMap()(s_layers, r_layers)
    shapes = PairShapes.from_configs(s_model.config, r_model.config, lmap)
    index = (torch.arange(n) + 1).clamp(max=n_s - 1).expand(batch, n).clone()
    mask = torch.rand(batch, n, generator=g) < 0.7
    mask[:, -1] = True
    mask[0, 0] = False
    return shapes, s_view, r_view, index, mask


def expected_valid(shapes: PairShapes, s_view: KVView, r_view: KVView, index, mask, layer: int) -> torch.Tensor:
    """(B, stored positions) mask of receiver entries that a fused layer may edit."""
    s = shapes.sharer_layer(layer)
    r0, s0 = r_view.start(layer), s_view.start(s)
    return mask[:, r0:] & (index[:, r0:] >= s0)


def build(kind: str, shapes: PairShapes) -> Translator:
    cls, kwargs = KINDS[kind]
    torch.manual_seed(0)
    return cls(shapes, **kwargs)


@torch.no_grad()
def perturb(tr: Translator, scale: float = 0.5) -> None:
    """Randomise every non-gate parameter (zero-initialised projections included)."""
    g = torch.Generator().manual_seed(1)
    for name, p in tr.named_parameters():
        if not name.startswith("gates."):
            p.copy_(torch.randn(p.shape, generator=g) * scale)


cases = pytest.mark.parametrize("direction", DIRECTIONS, ids=lambda d: f"{d[0]}->{d[1]}")
lengths = pytest.mark.parametrize("n", LENGTHS)
kinds = pytest.mark.parametrize("kind", list(KINDS))
maps = pytest.mark.parametrize("layer_map", ["explicit", "nearest"])


# -- fusion ----------------------------------------------------------------------------------------
@kinds
@cases
@lengths
@maps
def test_fresh_adapter_is_identity(kind, direction, n, layer_map):
    shapes, s_view, r_view, index, mask = make_case(direction, n, layer_map)
    tr = build(kind, shapes).eval()
    out = tr.fuse(s_view, r_view, index, mask)
    assert out.shapes() == r_view.shapes() and out.seq_len == r_view.seq_len
    for t in range(r_view.num_layers):
        if t not in shapes.fused_layers:
            assert out.keys[t] is r_view.keys[t] and out.values[t] is r_view.values[t]
        assert torch.equal(out.keys[t], r_view.keys[t]) and torch.equal(out.values[t], r_view.values[t])


@kinds
@cases
@lengths
@maps
def test_edits_only_valid_positions(kind, direction, n, layer_map):
    shapes, s_view, r_view, index, mask = make_case(direction, n, layer_map)
    tr = build(kind, shapes).eval()
    perturb(tr)
    with torch.no_grad():
        out = tr.fuse(s_view, r_view, index, mask)
    assert out.shapes() == r_view.shapes()
    for t in range(r_view.num_layers):
        if t not in shapes.fused_layers:
            assert out.keys[t] is r_view.keys[t] and out.values[t] is r_view.values[t]
            continue
        valid = expected_valid(shapes, s_view, r_view, index, mask, t)
        assert valid.any()
        for new, old in ((out.keys[t], r_view.keys[t]), (out.values[t], r_view.values[t])):
            changed = (new != old).any(dim=-1).any(dim=1)  # (B, stored positions)
            assert torch.equal(changed, valid), (t, changed, valid)


def test_sliding_sharer_layer_limits_fusion():
    """Gemma sharer layer 0 holds only the last 3 of 10 positions: earlier alignments are not fused."""
    shapes, s_view, r_view, index, mask = make_case(("gemma", "llama"), 9, "explicit")
    assert s_view.start(0) == 7
    valid = expected_valid(shapes, s_view, r_view, index, mask, 0)
    assert not valid[:, :6].any() and valid.any()


@kinds
@cases
def test_gradients_reach_every_parameter(kind, direction):
    shapes, s_view, r_view, index, mask = make_case(direction, 9, "nearest")
    tr = build(kind, shapes).train()
    perturb(tr)
    out = tr.fuse(s_view, r_view, index, mask)
    loss = sum((out.keys[t] ** 2).sum() + (out.values[t] ** 2).sum() for t in shapes.fused_layers)
    loss.backward()
    for name, p in tr.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@kinds
def test_no_valid_position_in_training_keeps_every_parameter_in_the_graph(kind):
    """A batch whose alignment is fully masked changes nothing, yet every parameter gets a (zero)
    gradient, as distributed data parallel requires."""
    shapes, s_view, r_view, index, _ = make_case(("gemma", "llama"), 9, "nearest")
    tr = build(kind, shapes).train()
    perturb(tr)
    out = tr.fuse(s_view, r_view, index, torch.zeros_like(index, dtype=torch.bool))
    for t in shapes.fused_layers:
        assert torch.equal(out.keys[t], r_view.keys[t]) and torch.equal(out.values[t], r_view.values[t])
    sum(out.keys[t].sum() + out.values[t].sum() for t in shapes.fused_layers).backward()
    for name, p in tr.named_parameters():
        if not name.startswith("gates."):
            assert p.grad is not None and p.grad.abs().sum() == 0, name


def test_fuse_rejects_wrong_direction_and_alignment_shape():
    shapes, s_view, r_view, index, mask = make_case(("llama", "gemma"), 9)
    tr = build("lcf_lowrank", shapes)
    with pytest.raises(KVCacheError, match="layout"):
        tr.fuse(r_view, s_view, index, mask)
    with pytest.raises(KVCacheError, match="align_index"):
        tr.fuse(s_view, r_view, index[:, 1:], mask[:, 1:])


# -- gates -----------------------------------------------------------------------------------------
def test_gates_gumbel_in_training_hard_in_eval():
    gates = LayerGates([0, 2])
    assert gates.values()[0] == pytest.approx((1 / (1 + math.exp(-1)),) * 2)
    torch.manual_seed(0)
    draws = torch.stack([torch.stack(gates(0)) for _ in range(20)])
    assert ((draws > 0) & (draws < 1)).all() and draws.std() > 0.01
    gates.set_temperature(1e-3)
    sharp = torch.stack([torch.stack(gates(2)) for _ in range(20)])
    assert ((sharp < 1e-3) | (sharp > 1 - 1e-3)).all()
    gates.eval()
    with torch.no_grad():
        gates.logits["2"].copy_(torch.tensor([-0.5, 3.0]))
    assert [float(g) for g in gates(2)] == [0.0, 1.0] and [float(g) for g in gates(0)] == [1.0, 1.0]
    assert gates.hard() == {0: (True, True), 2: (False, True)}
    with pytest.raises(ValueError):
        gates.set_temperature(0.0)


@kinds
def test_closed_gate_leaves_receiver_unchanged(kind):
    shapes, s_view, r_view, index, mask = make_case(("llama", "gemma"), 9, "nearest")
    tr = build(kind, shapes).eval()
    perturb(tr)
    with torch.no_grad():
        tr.gates.logits["0"].fill_(-1.0)  # both closed
        tr.gates.logits["2"].copy_(torch.tensor([-1.0, 1.0]))  # K closed, V open
        out = tr.fuse(s_view, r_view, index, mask)
    assert out.keys[0] is r_view.keys[0] and out.values[0] is r_view.values[0]
    assert out.keys[2] is r_view.keys[2] and not torch.equal(out.values[2], r_view.values[2])
    assert not torch.equal(out.keys[1], r_view.keys[1])


def test_annealed_temperature():
    assert annealed_temperature(0, 100) == pytest.approx(1.0)
    assert annealed_temperature(100, 100) == pytest.approx(0.001)
    assert annealed_temperature(250, 100) == pytest.approx(0.001)
    assert annealed_temperature(50, 100) == pytest.approx(math.sqrt(0.001))
    assert annealed_temperature(5, 10, start=2.0, end=0.5) == pytest.approx(1.0)
    assert annealed_temperature(3, 0) == pytest.approx(0.001)


# -- export / rebuild ------------------------------------------------------------------------------
def _layout(tr: Translator) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tr.state_dict().items()}


@kinds
def test_init_args_round_trip(kind):
    shapes = make_case(("gemma", "llama"), 3, "nearest")[0]
    tr = build(kind, shapes)
    args = json.loads(json.dumps(tr.init_args))
    assert "shapes" not in args and args == tr.init_args
    again = translators.build({"type": kind.split(":")[0], **args}, "translator",
                              shapes=PairShapes.from_dict(json.loads(json.dumps(shapes.to_dict()))))
    assert type(again) is type(tr) and _layout(again) == _layout(tr)


def test_pair_shapes_round_trip():
    for direction in DIRECTIONS:
        for layer_map in ("explicit", "nearest"):
            shapes = make_case(direction, 3, layer_map)[0]
            data = json.loads(json.dumps(shapes.to_dict()))
            assert PairShapes.from_dict(data) == shapes
    with pytest.raises(RecipeError, match="malformed"):
        PairShapes.from_dict({"sharer": []})


def test_lowrank_without_receiver_input_reads_only_the_sharer():
    shapes = make_case(("gemma", "llama"), 3, "nearest")[0]
    joint = build("lcf_lowrank", shapes)
    alone = build("lcf_lowrank:sharer_only", shapes)
    perturb(joint)
    perturb(alone)
    t = alone.active_layers[0]
    s_dim, r_dim = shapes.dims(t)
    assert alone.layers[str(t)].down.in_features == 2 * s_dim
    assert joint.layers[str(t)].down.in_features == 2 * s_dim + 2 * r_dim
    g = torch.Generator().manual_seed(0)
    sk, sv = torch.randn(2, 1, 5, s_dim, generator=g)
    rk, rv, rk2, rv2 = torch.randn(4, 1, 5, r_dim, generator=g)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(alone.delta(t, sk, sv, rk, rv), alone.delta(t, sk, sv, rk2, rv2)))
        assert not torch.equal(joint.delta(t, sk, sv, rk, rv)[0], joint.delta(t, sk, sv, rk2, rv2)[0])
    with pytest.raises(RecipeError, match="read_receiver"):
        LowRankJointKV(shapes, rank=8, read_receiver="no")


@kinds
def test_prune_drops_closed_layers(kind):
    shapes, s_view, r_view, index, mask = make_case(("llama", "gemma"), 9, "nearest")
    tr = build(kind, shapes)
    perturb(tr)
    with torch.no_grad():
        tr.gates.logits["1"].fill_(-2.0)
    before = tr.num_parameters()
    assert tr.prune() == [0, 2] and tr.active_layers == [0, 2]
    assert tr.num_parameters() < before
    assert not any(k.startswith(("layers.1.", "gates.logits.1")) for k in tr.state_dict())
    assert set(tr.gate_values()) == {0, 2}
    for mode in (True, False):
        out = tr.train(mode).fuse(s_view, r_view, index, mask)
        assert out.keys[1] is r_view.keys[1] and out.values[1] is r_view.values[1]
        assert not torch.equal(out.keys[2], r_view.keys[2])
    assert tr.init_args["active_layers"] == [0, 2]
    rebuilt = translators.get(kind.split(":")[0])(shapes=shapes, **json.loads(json.dumps(tr.init_args)))
    assert _layout(rebuilt) == _layout(tr)
    assert tr.prune(keep=[2]) == [2] and tr.active_layers == [2]
    with pytest.raises(Exception, match="not fused"):
        tr.prune(keep=[7])


# -- argument checks -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, match", [
    ({"type": "lcf_lowrank", "rank": 7}, "even"),
    ({"type": "lcf_lowrank", "rank": 0}, "rank"),
    ({"type": "lcf_lowrank", "rank": "big"}, "rank"),
    ({"type": "lcf_lowrank", "ranks": 8}, "rank"),
    ({"type": "c2c_projector", "hidden_dim": -4}, "hidden_dim"),
    ({"type": "c2c_projector", "dropout": 1.5}, "dropout"),
    ({"type": "gated_fusion", "bias": "yes"}, "bias"),
])
def test_bad_arguments(spec, match):
    shapes = make_case(("llama", "gemma"), 3)[0]
    with pytest.raises(RecipeError, match=match):
        translators.build(spec, "translator", shapes=shapes)


# -- sizes on the real demo pair (shapes from the model cards; no weights loaded) -------------------
def real_shapes(sharer: str, receiver: str) -> PairShapes:
    from lcf import cards

    def specs(name: str) -> tuple[LayerSpec, ...]:
        c = cards.model_card(name)
        if c.sliding_window is None:
            return tuple(LayerSpec(c.num_kv_heads, c.head_dim, None) for _ in range(c.num_layers))
        # Gemma-3: sliding window everywhere but every 6th layer (5, 11, 17), which attends globally
        return tuple(LayerSpec(c.num_kv_heads, c.head_dim, None if i % 6 == 5 else c.sliding_window)
                     for i in range(c.num_layers))

    s, r = specs(sharer), specs(receiver)
    return PairShapes(s, r, NearestLayerMap()(len(s), len(r)))


def test_parameter_counts_on_real_pair():
    shapes = real_shapes("gemma3-270m", "smollm2-135m-instruct")
    assert len(shapes.sharer) == 18 and len(shapes.receiver) == 30
    assert [i for i, s in enumerate(shapes.sharer) if s.sliding_window is None] == [5, 11, 17]
    counts = {}
    with torch.device("meta"):  # sizes only: no memory for ~400M C2C parameters
        for kind, kwargs in [("c2c_projector", {"hidden_dim": 1024}), ("lcf_lowrank", {"rank": 128}),
                             ("gated_fusion", {})]:
            counts[kind] = translators.build({"type": kind, **kwargs}, "translator", shapes=shapes).num_parameters()
    layers = len(shapes.fused_layers)
    for kind, count in counts.items():
        print(f"{kind}: {count:,} parameters, {count / layers:,.0f} per layer")
    assert counts["c2c_projector"] >= 25 * counts["lcf_lowrank"]
    assert counts["gated_fusion"] < counts["lcf_lowrank"]


# -- user subclasses -------------------------------------------------------------------------------
SUBCLASS_MODULE = '''
from __future__ import annotations

from lcf.registry import translators
from lcf.translators import LowRankJointKV, PairShapes


@translators.register("my_lowrank", override=True)
class MyLowRank(LowRankJointKV):
    """LCF low-rank translator with a scaled edit."""

    def __init__(self, shapes: PairShapes, scale: float = 1.0, rank: int = 16, **kwargs):
        super().__init__(shapes, rank=rank, **kwargs)
        self.scale = scale

    def delta(self, layer, sk, sv, rk, rv):
        dk, dv = super().delta(layer, sk, sv, rk, rv)
        return self.scale * dk, self.scale * dv
'''


def test_subclass_outside_the_package(tmp_path, monkeypatch):
    (tmp_path / "my_lcf_plugin.py").write_text(SUBCLASS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("my_lcf_plugin")
    shapes, s_view, r_view, index, mask = make_case(("gemma", "llama"), 9, "nearest")
    tr = translators.build({"type": "my_lowrank", "scale": 2.5, "rank": 8, "mlp_ratio": 2}, path="translator",
                           shapes=shapes)
    assert isinstance(tr, module.MyLowRank) and isinstance(tr, LowRankJointKV)
    assert tr.scale == 2.5 and tr.rank == 8 and tr.mlp_ratio == 2
    assert tr.init_args == {"scale": 2.5, "rank": 8, "mlp_ratio": 2}
    again = translators.build({"type": "my_lowrank", **tr.init_args}, shapes=shapes)
    assert _layout(again) == _layout(tr)
    perturb(tr)
    out = tr.eval().fuse(s_view, r_view, index, mask)
    assert not torch.equal(out.keys[1], r_view.keys[1])
    with pytest.raises(RecipeError, match="scale"):
        translators.build({"type": "my_lowrank", "scale": "x"}, "translator", shapes=shapes)


def test_gates_apply_to_edits_inside_the_module():
    from lcf.translators.base import LayerGates

    gates = LayerGates([0, 1])
    with torch.no_grad():
        gates.logits["1"].copy_(torch.tensor([-1.0, 2.0]))
    gates.eval()
    dk, dv = torch.ones(1, 3, 4), torch.full((1, 3, 4), 2.0)
    gk, gv = gates(1, dk, dv)
    assert torch.equal(gk, torch.zeros_like(dk)) and torch.equal(gv, dv)
    gates.train()
    gates.set_temperature(1.0)
    dk.requires_grad_(True)
    gk, gv = gates(0, dk, dv)
    (gk.sum() + gv.sum()).backward()
    assert gates.logits["0"].grad is not None and gates.logits["0"].grad.abs().sum() > 0
    assert dk.grad is not None
