"""The stacked fusion path against the per-layer reference: same outputs and gradients (within 1e-5)
for every built-in translator, on the tiny heterogeneous pair (sliding-window layers that store
fewer positions than the prompt, unfused layers, both directions), in training and in eval."""
from __future__ import annotations

import pytest
import torch

from tests.test_translators import DIRECTIONS, KINDS, build, make_case, perturb

TOL = dict(rtol=1e-5, atol=1e-5)


def run(tr, path: str, case, seed: int = 3):
    """Fused keys/values (receiver layers in order) and the gradients of a fixed random loss."""
    shapes, s_view, r_view, index, mask = case
    tr.stacked = path == "stacked"
    tr.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same Gumbel draws on both paths
    out = tr.fuse(s_view, r_view, index, mask)
    g = torch.Generator().manual_seed(7)
    loss = sum((k * torch.randn(k.shape, generator=g)).sum() + (v * torch.randn(v.shape, generator=g)).sum()
               for k, v in zip(out.keys, out.values))
    if loss.requires_grad:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in tr.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("direction", DIRECTIONS, ids=lambda d: f"{d[0]}->{d[1]}")
@pytest.mark.parametrize("n", [3, 9])
@pytest.mark.parametrize("layer_map", ["explicit", "nearest"])
def test_stacked_equals_per_layer_in_training(kind, direction, n, layer_map):
    case = make_case(direction, n, layer_map)
    tr = build(kind, case[0]).train()
    perturb(tr)
    ref, ref_grads = run(tr, "per_layer", case)
    out, grads = run(tr, "stacked", case)
    for t in range(len(ref.keys)):
        torch.testing.assert_close(out.keys[t], ref.keys[t], **TOL)
        torch.testing.assert_close(out.values[t], ref.values[t], **TOL)
    assert set(grads) == set(ref_grads) and grads  # every parameter reached on both paths
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_stacked_equals_per_layer_in_eval_with_closed_gates_and_pruning(kind):
    direction = DIRECTIONS[1]
    case = make_case(direction, 9, "nearest")
    shapes, _, r_view, _, _ = case
    tr = build(kind, shapes).eval()
    perturb(tr)
    layers = tr.active_layers
    with torch.no_grad():
        tr.gates.logits[str(layers[0])].copy_(torch.tensor([-1.0, 1.0]))  # K closed, V open
    tr.prune(keep=layers[:-1] if len(layers) > 1 else layers)
    ref, _ = run(tr, "per_layer", case)
    out, _ = run(tr, "stacked", case)
    for t in range(len(ref.keys)):
        torch.testing.assert_close(out.keys[t], ref.keys[t], **TOL)
        torch.testing.assert_close(out.values[t], ref.values[t], **TOL)
        # layers (or halves) left unedited are the receiver's own tensors on both paths
        assert (out.keys[t] is r_view.keys[t]) == (ref.keys[t] is r_view.keys[t])
        assert (out.values[t] is r_view.values[t]) == (ref.values[t] is r_view.values[t])
    assert out.keys[layers[0]] is r_view.keys[layers[0]]


def test_stacked_gate_draws_match_per_layer_draws():
    from lcf.translators import LayerGates

    gates = LayerGates([0, 2, 5]).train()
    with torch.no_grad():
        for i, p in enumerate(gates.logits.values()):
            p.copy_(torch.tensor([0.3 * i - 0.2, 1.0 - 0.5 * i]))
    torch.manual_seed(11)
    ref = [gates(t) for t in (0, 2, 5)]
    torch.manual_seed(11)
    gk, gv = gates([0, 2, 5])
    torch.testing.assert_close(gk, torch.stack([r[0] for r in ref]))
    torch.testing.assert_close(gv, torch.stack([r[1] for r in ref]))


@pytest.mark.parametrize("slots,slot_mode", [(1, "spans"), (3, "spans"), (2, "queries")])
@pytest.mark.parametrize("ts", [3, 10])  # 3: both read layers stack into one group; 10: the sliding one stores less
def test_span_pool_stacked_equals_per_layer(slots, slot_mode, ts):
    from lcf.align.layers import NearestLayerMap
    from lcf.models.kv import KVView, prefill
    from lcf.registry import compressors
    from lcf.translators.base import PairShapes
    from tests.conftest import tiny_gemma3, tiny_llama

    receiver, sharer = tiny_llama(), tiny_gemma3(seed=10)
    shapes = PairShapes.from_configs(sharer.config, receiver.config, NearestLayerMap()(3, 2))
    comp = compressors.build({"type": "span_pool", "slots": slots, "slot_mode": slot_mode}, "compressor",
                             shapes=shapes).train()
    with torch.no_grad():
        for p in comp.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        view = prefill(sharer, torch.randint(3, 131, (2, ts), generator=g))
    view = KVView([k.clone().requires_grad_() for k in view.keys], [v.clone() for v in view.values],
                  view.seq_len, view.specs)
    span_ids = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 3, 3, -1][:ts], [-1, -1, 0, 0, 0, 0, 1, 1, 1, 1][:ts]])
    stored = {view.length(i) for i in comp.sharer_layers}
    assert len(stored) == (1 if ts == 3 else 2)
    results = {}
    for path in ("per_layer", "stacked"):
        comp.stacked = path == "stacked"
        comp.zero_grad(set_to_none=True)
        for k in view.keys:
            k.grad = None
        out = comp(view, span_ids)
        w = torch.Generator().manual_seed(5)
        loss = sum((x * torch.randn(x.shape, generator=w)).sum() for x in (*out.keys, *out.values))
        loss.backward()
        results[path] = (out, {n: p.grad.clone() for n, p in comp.named_parameters() if p.grad is not None},
                         [k.grad.clone() for k in view.keys])
    (ref, ref_g, ref_in), (got, got_g, got_in) = results["per_layer"], results["stacked"]
    for a, b in zip((*got.keys, *got.values), (*ref.keys, *ref.values)):
        torch.testing.assert_close(a, b, **TOL)
    assert set(got_g) == set(ref_g) and got_g
    for name in ref_g:
        torch.testing.assert_close(got_g[name], ref_g[name], **TOL)
    for a, b in zip(got_in, ref_in):
        torch.testing.assert_close(a, b, **TOL)


def overlap_case(device: str = "cpu"):
    """A tiny token-aligned communicator (trained-looking translator) and a batch of 2 on ``device``."""
    from lcf.align.layers import NearestLayerMap
    from lcf.communicator import Communicator
    from lcf.registry import translators
    from lcf.translators.base import PairShapes
    from tests.conftest import tiny_gemma3, tiny_llama
    from tests.test_compressor import xc_batch

    receiver, sharer = tiny_llama(), tiny_gemma3(seed=10)
    shapes = PairShapes.from_configs(sharer.config, receiver.config, NearestLayerMap()(3, 2))
    tr = translators.build({"type": "lcf_lowrank", "rank": 8}, "translator", shapes=shapes)
    perturb(tr)
    comm = Communicator(receiver, [sharer], [tr]).eval().to(device)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in xc_batch().items()}
    batch["align_index"] = torch.arange(6, device=device).expand(2, 6).clone()
    return comm, batch


def assert_overlap_changes_nothing(comm, batch, flag: str, **tolerance) -> None:
    """The fused cache with ``comm.<flag>`` off and on are equal (within ``tolerance``)."""
    setattr(comm, flag, False)
    ref = comm.fused_prompt_cache(batch)
    setattr(comm, flag, True)
    out = comm.fused_prompt_cache(batch)
    for a, b in zip((*out.keys, *out.values), (*ref.keys, *ref.values)):
        torch.testing.assert_close(a, b, **tolerance)


def test_cpu_overlapped_prefills_give_the_same_fused_cache():
    comm, batch = overlap_case()
    threads = torch.get_num_threads()
    assert_overlap_changes_nothing(comm, batch, "cpu_overlap_prefills")
    assert torch.get_num_threads() == threads  # the split is undone
    assert any(not torch.equal(a, b) for a, b in zip(comm.fused_prompt_cache(batch).keys,
                                                      comm.fused_prompt_cache(batch, fuse=False).keys))
    # autocast is per thread: the worker's prefill must run under the caller's (bf16-mixed training on CPU)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_overlap_changes_nothing(comm, batch, "cpu_overlap_prefills", rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("threads", [False, True])
def test_cuda_side_stream_prefills_give_the_same_fused_cache(threads):
    comm, batch = overlap_case("cuda")
    comm.cuda_overlap_threads = threads
    for autocast in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            assert_overlap_changes_nothing(comm, batch, "overlap_prefills", rtol=0, atol=0)
    comm.overlap_prefills = None  # the default: side streams for 2 or more rows only
    assert comm._side_stream_prefills(batch, [None])[1]
    one = {k: v[:1] if torch.is_tensor(v) else v for k, v in batch.items()}
    assert comm._side_stream_prefills(one, [None]) == ({}, [])


def test_cpu_overlap_is_on_by_default_only_with_two_or_more_threads(monkeypatch):
    from lcf.communicator import Communicator
    from tests.conftest import tiny_gemma3, tiny_llama
    from tests.test_compressor import xc_batch

    comm = Communicator(tiny_llama(), [tiny_gemma3(seed=10)], [torch.nn.Identity()])
    batch = xc_batch()
    calls = []
    monkeypatch.setattr(comm, "_thread_prefills", lambda jobs: calls.append(len(jobs)) or ({}, []))
    threads = torch.get_num_threads()
    try:
        for n, expected in ((1, []), (2, [1])):
            calls.clear()
            torch.set_num_threads(n)
            comm._side_stream_prefills(batch, [None])
            assert calls == expected, n
        comm.cpu_overlap_prefills = False
        calls.clear()
        comm._side_stream_prefills(batch, [None])
        assert calls == []
    finally:
        torch.set_num_threads(threads)


def test_inference_keeps_stacked_weights_until_a_parameter_changes():
    from lcf.translators import stacked

    case = make_case(DIRECTIONS[0], 3, "nearest")
    tr = build("lcf_lowrank", case[0]).eval()
    perturb(tr)
    mods = [tr.layers[str(t)].down for t in tr.active_layers]
    with torch.no_grad():
        first = stacked.stack([m.weight for m in mods])
        assert stacked.stack([m.weight for m in mods]) is first  # kept
        ref, _ = run(tr, "per_layer", case)
        out, _ = run(tr, "stacked", case)
        mods[1].weight.add_(1.0)  # an in-place update (an optimizer step, load_state_dict)
        again = stacked.stack([m.weight for m in mods])
    assert again is not first and torch.equal(again[1], mods[1].weight)
    for a, b in zip(out.keys, ref.keys):
        torch.testing.assert_close(a, b, **TOL)
    with torch.no_grad():
        after, _ = run(tr, "stacked", case)
        ref_after, _ = run(tr, "per_layer", case)
    for a, b in zip(after.keys, ref_after.keys):
        torch.testing.assert_close(a, b, **TOL)
    tr.to(torch.float64)  # .to() swaps the parameters' data: the kept copy must not be reused
    with torch.no_grad():
        assert stacked.stack([m.weight for m in mods]).dtype == torch.float64


@pytest.mark.parametrize("slot_mode", ["spans", "queries"])
def test_span_pool_read_stacked_equals_per_layer(slot_mode):
    from lcf.align.layers import NearestLayerMap
    from lcf.models.kv import KVView, prefill
    from lcf.registry import compressors
    from lcf.translators.base import PairShapes
    from tests.conftest import tiny_gemma3, tiny_llama

    receiver, sharer = tiny_llama(), tiny_gemma3(seed=10)
    shapes = PairShapes.from_configs(sharer.config, receiver.config, NearestLayerMap()(3, 2))
    comp = compressors.build({"type": "span_pool", "slots": 3, "slot_mode": slot_mode}, "compressor", shapes=shapes)
    with torch.no_grad():
        for p in comp.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        r_view = prefill(receiver, torch.randint(3, 90, (2, 6), generator=g))
    keys, values = [], []
    for i, spec in enumerate(shapes.sharer):
        s = 3 if i in comp.sharer_layers else 0
        keys.append(torch.randn(2, spec.kv_heads, s, spec.head_dim, generator=g))
        values.append(torch.randn(2, spec.kv_heads, s, spec.head_dim, generator=g))
    keys[comp.sharer_layers[0]][1, :, 2] = 0.0  # an absent slot
    summary = KVView(keys, values, 3, list(shapes.sharer))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :2] = False
    results = {}
    for path in ("per_layer", "stacked"):
        comp.stacked = path == "stacked"
        comp.zero_grad(set_to_none=True)
        view, index, amask = comp.read(summary, r_view, mask)
        w = torch.Generator().manual_seed(5)
        sum((x * torch.randn(x.shape, generator=w)).sum() for x in (*view.keys, *view.values)).backward()
        results[path] = (view, index, amask, {n: p.grad.clone() for n, p in comp.named_parameters() if p.grad is not None})
    (ref, ri, rm, ref_g), (got, gi, gm, got_g) = results["per_layer"], results["stacked"]
    assert torch.equal(ri, gi) and torch.equal(rm, gm)
    for a, b in zip((*got.keys, *got.values), (*ref.keys, *ref.values)):
        torch.testing.assert_close(a, b, **TOL)
    assert set(got_g) == set(ref_g) and any(n.startswith("read_query") for n in got_g)
    for name in ref_g:
        torch.testing.assert_close(got_g[name], ref_g[name], **TOL)
