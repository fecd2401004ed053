"""span_pool compressor and its use inside the Communicator (tiny models, hand-made batches)."""
from __future__ import annotations

import pytest
import torch

from lcf.align.layers import NearestLayerMap, TerminalLayerMap
from lcf.communicator import Communicator
from lcf.compressors import SpanPool
from lcf.compressors.span_pool import masked_softmax
from lcf.errors import LCFError, RecipeError
from lcf.models.kv import KVView, prefill
from lcf.registry import compressors, translators
from lcf.translators.base import PairShapes
from tests.conftest import tiny_gemma3, tiny_llama


def xc_batch(b=2, tp=6, ts=10, tr=4, seed=0, spans=((0, 0, 0, 1, 1, 1, 2, 2, 2, -1), (-1, -1, -1, 0, 0, 1, 1, 1, 1, -1))):
    g = torch.Generator().manual_seed(seed)
    rp = torch.randint(3, 97, (b, tp), generator=g)
    rpm = torch.ones(b, tp, dtype=torch.long)
    rpm[1, :2] = 0
    sp = torch.randint(3, 131, (b, ts), generator=g)
    spm = torch.ones(b, ts, dtype=torch.long)
    spm[1, :3] = 0  # left padding: its span ids are -1
    return {"receiver_prompt_ids": rp, "receiver_prompt_mask": rpm, "sharer_prompt_ids": sp, "sharer_prompt_mask": spm,
            "sharer_span_ids": torch.tensor(spans, dtype=torch.long), "align_index": torch.zeros(b, tp, dtype=torch.long),
            "align_mask": rpm.bool(), "response_ids": torch.randint(3, 97, (b, tr), generator=g),
            "response_mask": torch.ones(b, tr, dtype=torch.long)}


def make_xc(perturb=True, layer_map=None):
    receiver, sharer = tiny_llama(), tiny_gemma3(seed=10)
    shapes = PairShapes.from_configs(sharer.config, receiver.config, layer_map or NearestLayerMap()(3, 2))
    tr = translators.build({"type": "lcf_lowrank", "rank": 8}, "translator", shapes=shapes)
    comp = compressors.build({"type": "span_pool", "spans": "sentence"}, "compressor", shapes=shapes)
    if perturb:
        with torch.no_grad():
            for p in [*tr.parameters(), *comp.parameters()]:
                p.add_(0.1 * torch.randn_like(p))
    return Communicator(receiver, [sharer], [tr], compressors=[comp])


def test_masked_softmax_is_zero_on_empty_slices():
    w = masked_softmax(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[True, False], [False, False]]), -1)
    assert torch.equal(w, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_zero_queries_give_mean_of_span_means():
    comm = make_xc(perturb=False)
    comp = comm.compressor(0)
    batch = xc_batch()
    view = prefill(comm.sharers[0], batch["sharer_prompt_ids"], attention_mask=batch["sharer_prompt_mask"])
    out = comp(view, batch["sharer_span_ids"])
    assert out.seq_len == 1 and comp.sharer_layers == [0, 2]
    for layer in range(view.num_layers):
        if layer not in comp.sharer_layers:
            assert out.length(layer) == 0
            continue
        k = view.keys[layer]
        start = view.start(layer)  # a sliding layer stores the last positions only
        for row in range(2):
            ids = batch["sharer_span_ids"][row, start:]
            means = [k[row, :, ids == p].mean(1) for p in sorted(set(ids.tolist()) - {-1})]
            want = torch.stack(means).mean(0)
            assert torch.allclose(out.keys[layer][row, :, 0], want, atol=1e-5), (layer, row)


def test_summary_does_not_depend_on_span_count_being_fixed():
    comm = make_xc()
    batch = xc_batch()
    a = comm.summaries(batch)[0]
    other = dict(batch, sharer_span_ids=torch.tensor([[0] * 9 + [-1], [-1] * 3 + [0, 1, 2, 3, 4, 5, 6]]))
    b = comm.summaries(other)[0]
    assert a.keys[2].shape == b.keys[2].shape == (2, 1, 1, 8)
    assert not torch.allclose(a.keys[2], b.keys[2])
    assert torch.isfinite(b.keys[2]).all()


def test_tokens_outside_spans_and_padding_do_not_matter():
    comm = make_xc().eval()
    batch = xc_batch()
    ref = comm.summaries(batch)[0]
    changed = dict(batch)
    changed["sharer_prompt_ids"] = batch["sharer_prompt_ids"].clone()
    changed["sharer_prompt_ids"][1, :3] = 5  # padding tokens (masked out of attention, span -1)
    out = comm.summaries(changed)[0]
    assert torch.allclose(ref.keys[2], out.keys[2], atol=1e-5)


def test_summary_is_broadcast_to_every_receiver_position_and_trains():
    comm = make_xc()
    comm.train()
    batch = xc_batch()
    out = comm(batch)
    out["loss"].backward()
    comp = comm.compressor(0)
    assert all(p.grad is not None for p in comp.parameters())
    # the global layer 2 stores every span; (sliding layer 0 keeps one span per row: its summary
    # query gets a zero gradient, softmax over a single span being constant)
    assert comp.span_query["2"].grad.abs().sum() > 0 and comp.summary_query["2"].grad.abs().sum() > 0
    assert all(p.grad is None for p in comm.receiver.parameters()) and all(p.grad is None for p in comm.sharers[0].parameters())
    assert {n.split(".")[0] for n, _ in comm.named_parameters()} == {"translators", "compressors"}
    comm.eval()
    with torch.no_grad():
        base = comm.fused_prompt_cache(batch, fuse=False)
        fused = comm.fused_prompt_cache(batch)
        edited = (fused.keys[1] - base.keys[1]).abs().sum(-1)  # (B, H, T)
        real = batch["receiver_prompt_mask"][:, :-1].bool()
        assert (edited.amax(1)[real] > 0).all() and (edited.amax(1)[~real] == 0).all()
        # a precomputed summary gives the same cache, without running the sharer
        summary = comm.summaries(batch)[0]
        sharer, comm.__dict__["sharers"] = comm.sharers, [None]
        try:
            again = comm.fused_prompt_cache(batch, sharer_views=[summary])
            with pytest.raises(LCFError, match="sharer 0 is not loaded"):
                comm.fused_prompt_cache(batch)
        finally:
            comm.__dict__["sharers"] = sharer
        assert all(torch.equal(x, y) for x, y in zip(again.keys, fused.keys))


def test_missing_span_ids_and_bad_arguments():
    comm = make_xc()
    batch = xc_batch()
    del batch["sharer_span_ids"]
    with pytest.raises(LCFError, match="needs `sharer_span_ids`"):
        comm(batch)
    shapes = comm.compressor(0).shapes
    with pytest.raises(RecipeError, match="spans must be one of"):
        SpanPool(shapes, spans="chapters")
    with pytest.raises(RecipeError, match="span_tokens"):
        SpanPool(shapes, span_tokens=0)
    with pytest.raises(LCFError, match="2 compressors for 1 sharers"):
        Communicator(comm.receiver, comm.sharers, list(comm.translators), compressors=[None, None])
    assert SpanPool(shapes, spans="tokens", span_tokens=4).init_args == {"spans": "tokens", "span_tokens": 4,
                                                                         "max_spans": 64, "slots": 1,
                                                                         "slot_mode": "spans", "read": "attend",
                                                                         "read_offset": 1}
    with pytest.raises(RecipeError, match="slots"):
        SpanPool(shapes, slots=0)
    with pytest.raises(RecipeError, match="slot_mode must be one of spans, queries"):
        SpanPool(shapes, slots=2, slot_mode="heads")


def test_sliding_window_layers_summarise_what_they_store():
    # tiny Gemma-3 keeps window - 1 = 3 positions in its sliding layers: spans evicted there are ignored
    receiver, sharer = tiny_llama(), tiny_gemma3(seed=10)
    shapes = PairShapes.from_configs(sharer.config, receiver.config, TerminalLayerMap()(3, 2))
    comp = SpanPool(shapes)
    assert comp.sharer_layers == [1, 2]
    batch = xc_batch()
    view = prefill(sharer, batch["sharer_prompt_ids"], attention_mask=batch["sharer_prompt_mask"])
    assert view.length(1) == 3 and view.length(2) == 10
    out = comp(view, batch["sharer_span_ids"])
    stored = batch["sharer_span_ids"][0, -3:]  # spans 2, 2, -1
    assert torch.allclose(out.keys[1][0, :, 0], view.keys[1][0, :, stored == 2].mean(1), atol=1e-5)
    with pytest.raises(LCFError, match="span_ids"):
        comp(view, batch["sharer_span_ids"][:, :5])
    empty = KVView([k[:, :, :0] for k in view.keys], [v[:, :, :0] for v in view.values], 10, view.specs)
    zero = comp(empty, batch["sharer_span_ids"])
    assert torch.equal(zero.keys[2], torch.zeros(2, 1, 1, 8))


# -- several summary slots ------------------------------------------------------------------------------
def make_slots(slots, mode="spans", perturb=True):
    receiver, sharer = tiny_llama(), tiny_gemma3(seed=10)
    shapes = PairShapes.from_configs(sharer.config, receiver.config, NearestLayerMap()(3, 2))
    tr = translators.build({"type": "lcf_lowrank", "rank": 8}, "translator", shapes=shapes)
    comp = compressors.build({"type": "span_pool", "spans": "sentence", "slots": slots, "slot_mode": mode},
                             "compressor", shapes=shapes)
    if perturb:
        with torch.no_grad():
            for p in tr.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return Communicator(receiver, [sharer], [tr], compressors=[comp])


def test_one_slot_keeps_the_exported_tensor_names():
    names = set(make_xc().compressor(0).state_dict())
    assert names == {f"{kind}.{s}" for kind in ("span_query", "summary_query") for s in (0, 2)}
    assert make_slots(1).compressor(0).summary_len == 1


def test_span_slots_hold_one_span_each_and_the_fresh_reader_takes_their_mean():
    comm = make_slots(4, perturb=False).eval()
    comp = comm.compressor(0)
    batch = xc_batch()
    view = prefill(comm.sharers[0], batch["sharer_prompt_ids"], attention_mask=batch["sharer_prompt_mask"])
    out = comp(view, batch["sharer_span_ids"])
    assert out.seq_len == 4 and out.keys[2].shape == (2, 1, 4, 8)
    k, ids = view.keys[2], batch["sharer_span_ids"]
    for row, spans in ((0, 3), (1, 2)):
        for p in range(4):
            want = k[row, :, ids[row] == p].mean(1) if p < spans else torch.zeros(1, 8)
            assert torch.allclose(out.keys[2][row, :, p], want, atol=1e-5), (row, p)
    # more spans than slots: the later ones merge into the last slot
    two = make_slots(2, perturb=False).compressor(0)(view, ids)
    assert torch.allclose(two.keys[2][0, :, 1], k[0, :, (ids[0] == 1) | (ids[0] == 2)].mean(1), atol=1e-5)
    # the zero-initialised read query: every receiver position reads the mean of the present slots
    base = comm.fused_prompt_cache(batch, fuse=False)
    mask = batch["receiver_prompt_mask"][:, :-1].bool()
    read, index, amask = comp.read(out, base, mask)
    assert read.seq_len == base.seq_len and torch.equal(amask, mask) and torch.equal(index[0], torch.arange(5))
    for row, spans in ((0, 3), (1, 2)):
        want = out.keys[2][row, :, :spans].mean(1)
        assert torch.allclose(read.keys[2][row, :, 3], want, atol=1e-5)
    # an all-zero summary (the zero control) reads as zero
    zero = KVView([torch.zeros_like(x) for x in out.keys], [torch.zeros_like(x) for x in out.values], 4, out.specs)
    assert comp.read(zero, base, mask)[0].keys[2].abs().sum() == 0


@pytest.mark.parametrize("mode", ["spans", "queries"])
def test_slots_train_end_to_end_and_read_by_receiver_position(mode):
    comm = make_slots(3, mode)
    comm.train()
    batch = xc_batch()
    comm(batch)["loss"].backward()
    comp = comm.compressor(0)
    assert comp.read_query["2"].weight.grad.abs().sum() > 0
    if mode == "queries":
        assert comp.summary_query["2"].shape == (3, 1, 8) and comp.summary_query["2"].grad.abs().sum() > 0
    with torch.no_grad():
        comp.read_query["2"].weight.normal_()
    comm.eval()
    summary = comm.summaries(batch)[0]
    assert summary.seq_len == 3
    base = comm.fused_prompt_cache(batch, fuse=False)
    read, _, _ = comp.read(summary, base, batch["receiver_prompt_mask"][:, :-1].bool())
    # a trained reader makes different positions read different mixtures of the slots
    assert not torch.allclose(read.keys[2][0, :, 2], read.keys[2][0, :, 4])
    fused = comm.fused_prompt_cache(batch)
    again = comm.fused_prompt_cache(batch, sharer_views=[summary])
    assert all(torch.equal(x, y) for x, y in zip(again.keys, fused.keys))


# -- long sharer contexts: every position's K/V, sliding layers included ------------------------------------
def reference_all_positions(model, ids, mask):
    """A one-pass prefill into a cache that never evicts (every layer a plain growing layer)."""
    from transformers import DynamicCache

    from lcf.models.kv import cache_kwargs, decoder, layer_specs

    cache = DynamicCache()
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    body = decoder(model)
    with torch.no_grad():
        body(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **cache_kwargs(body, cache))
    return KVView([l.keys for l in cache.layers], [l.values for l in cache.layers], ids.shape[1],
                  layer_specs(model.config))


def test_chunked_capture_keeps_every_position_of_sliding_layers():
    from lcf.models.capture import capture_chunk, prefill_all_positions

    sharer = tiny_gemma3(seed=10)  # window 4: sliding layers store 3 positions
    assert capture_chunk(sharer.config) == 3
    batch = xc_batch(ts=10)
    ids, mask = batch["sharer_prompt_ids"], batch["sharer_prompt_mask"]
    ref = reference_all_positions(sharer, ids, mask)
    plain = prefill(sharer, ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    assert plain.length(0) == 3  # what a plain prefill leaves a compressor
    # the reference is a true sliding-window prefill: its last positions are what the plain prefill stores
    assert torch.allclose(ref.keys[0][:, :, -3:], plain.keys[0], atol=1e-6)
    for chunk in (1, 3):
        got = prefill_all_positions(sharer, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), chunk=chunk)
        for i in range(3):
            assert got.length(i) == 10 and got.start(i) == 0
            assert torch.allclose(got.keys[i], ref.keys[i], atol=1e-5), (chunk, i)
            assert torch.allclose(got.values[i], ref.values[i], atol=1e-5), (chunk, i)
    with pytest.raises(LCFError, match="chunk=4 must be between 1 and 3"):
        prefill_all_positions(sharer, ids, mask, chunk=4)


def test_communicator_summarises_spans_a_sliding_layer_evicted():
    # sliding layer 1 is summarised (terminal map): before chunked capture it saw only the last 3 tokens
    receiver, sharer = tiny_llama(), tiny_gemma3(seed=10)
    shapes = PairShapes.from_configs(sharer.config, receiver.config, TerminalLayerMap()(3, 2))
    tr = translators.build({"type": "lcf_lowrank", "rank": 8}, "translator", shapes=shapes)
    comp = SpanPool(shapes)
    comm = Communicator(receiver, [sharer], [tr], compressors=[comp]).eval()
    batch = xc_batch()
    got = comm.summaries(batch)[0]
    ref = comp(reference_all_positions(sharer, batch["sharer_prompt_ids"], batch["sharer_prompt_mask"]),
               batch["sharer_span_ids"])
    for layer in (1, 2):
        assert torch.allclose(got.keys[layer], ref.keys[layer], atol=1e-5)
        assert torch.allclose(got.values[layer], ref.values[layer], atol=1e-5)
    assert comp.context_limit(sharer.config) == 256  # the tiny model's max positions, not its window


@pytest.mark.parametrize("quantize", ["none", "int4"])
def test_slot_messages_travel_as_bytes(quantize):
    from lcf.runtime.messages import LatentMessage

    comm = make_slots(4).eval()
    comp = comm.compressor(0)
    with torch.no_grad():
        comp.read_query["2"].weight.normal_()
    batch = xc_batch()
    summary = comm.summaries(batch)[0]
    rows = [LatentMessage.from_bytes(LatentMessage.from_view(summary, comp.sharer_layers, {}, r).to_bytes(quantize))
            for r in range(2)]
    assert rows[0].keys[2].shape == (1, 4, 8)
    from lcf.models.kv import cat_views

    view = cat_views([m.to_view(comp.shapes.sharer) for m in rows])
    fused = comm.fused_prompt_cache(batch)
    again = comm.fused_prompt_cache(batch, sharer_views=[view])
    tol = 0 if quantize == "none" else 0.5
    assert all(torch.allclose(x, y, atol=tol) for x, y in zip(again.keys, fused.keys))
    if quantize == "none":
        assert all(torch.equal(x, y) for x, y in zip(again.keys, fused.keys))


def test_positions_read_writes_each_slot_into_its_own_prompt_position():
    receiver, sharer = tiny_llama(), tiny_gemma3(seed=10)
    shapes = PairShapes.from_configs(sharer.config, receiver.config, NearestLayerMap()(3, 2))
    tr = translators.build({"type": "lcf_lowrank", "rank": 8}, "translator", shapes=shapes)
    comp = compressors.build({"type": "span_pool", "spans": "sentence", "slots": 2, "read": "positions",
                              "read_offset": 1}, "compressor", shapes=shapes)
    assert len(comp.read_query) == 0 and comp.init_args["read"] == "positions"
    with torch.no_grad():
        for p in tr.parameters():
            p.add_(0.1 * torch.randn_like(p))
    comm = Communicator(receiver, [sharer], [tr], compressors=[comp]).eval()
    batch = xc_batch()  # row 1 is left-padded by 2: its slots land 2 positions later
    base = comm.fused_prompt_cache(batch, fuse=False)
    fused = comm.fused_prompt_cache(batch)
    mask = batch["receiver_prompt_mask"][:, :-1].bool()
    _, index, amask = comp.read(comm.summaries(batch)[0], base, mask)
    assert amask[0].tolist() == [False, True, True, False, False] and index[0, 1:3].tolist() == [0, 1]
    assert amask[1].tolist() == [False, False, False, True, True] and index[1, 3:5].tolist() == [0, 1]
    for layer in range(base.num_layers):
        edited = (fused.keys[layer] - base.keys[layer]).abs().sum((1, 3)) > 0  # (B, T)
        assert torch.equal(edited, amask), layer
    # another item's summary changes the written positions' K/V
    swapped = comm.fused_prompt_cache(batch, sharer_transform=lambda i, v: KVView(
        [k.flip(0) for k in v.keys], [x.flip(0) for x in v.values], v.seq_len, v.specs))
    assert not torch.allclose(swapped.keys[0][0, :, 1:3], fused.keys[0][0, :, 1:3])
    comm.train()
    comm(batch)["loss"].backward()
    assert comp.span_query["2"].grad.abs().sum() > 0
    with pytest.raises(LCFError, match="needs more than"):
        comp.read(comm.summaries(batch)[0], base, mask[:, :2])
    with pytest.raises(RecipeError, match="read must be"):
        compressors.build({"type": "span_pool", "read": "slots"}, "compressor", shapes=shapes)
    with pytest.raises(RecipeError, match="read_offset` must be an integer >= 0"):
        compressors.build({"type": "span_pool", "read": "positions", "read_offset": -1}, "compressor", shapes=shapes)
