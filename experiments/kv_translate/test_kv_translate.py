"""experiments/kv_translate (run with `python -m pytest experiments/kv_translate`; the rows it reads are tested in
tests/test_token_rows.py): the sharer's per-token cache, translated, in place of the receiver's own."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_gemma3, tiny_llama
from lcf.data.xc.features import XCExample
from lcf.errors import LCFError
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the experiment's own modules
import kv_translate as kt  # noqa: E402
from lcf.token_map.rows import head_only  # noqa: E402
from tests.test_token_rows import same_pair  # noqa: E402,F401  (one model on both sides; kt.Pair is TokenRows)

CONTEXTS = [
    "Ada Lindqvist moved to Tromsø a few years ago. She works as a luthier.",
    "Bo Renner keeps three goats and a cat called Pilsner on a farm near Ghent.",
    "The locker assigned to Cleo Marsh is number 556; her home town is Jakarta.",
    "Dario Vesk repairs clocks in Trieste and sings in a choir on Sundays.",
    "Emi Tanaka grew up in Osaka, studied chemistry, and now teaches in Leeds.",
    "Farid Nour owns a red kayak and paddles on Lake Geneva every morning.",
    "Greta Holm writes crossword puzzles for a newspaper in Aarhus.",
]


def _items() -> list[XCExample]:
    return [XCExample(id=str(i), sharer_context=c, question="Where does this person live?", answers=["x"])
            for i, c in enumerate(CONTEXTS)]


def test_ridge_recovers_the_identity_and_the_text_answers(same_pair, tmp_path):
    items = _items()
    rows = [same_pair.features(it)[:2] for it in items]
    ridge, report = kt.Ridge.fit(iter(rows[2:]), rows[:2], lambdas=(1e-9, 10.0), chunk=16)
    assert report["lambda"] == 1e-9 and report["r2"]["1e-09"] > 0.999 > report["r2"]["10.0"]
    assert report["tokens"] == sum(len(r[0]) for r in rows[2:])
    torch.testing.assert_close(ridge(rows[0][0].float()), rows[0][1].float(), atol=1e-3, rtol=1e-3)
    ridge.save(tmp_path / "ridge.safetensors", report)
    again, saved = kt.Ridge.load(tmp_path / "ridge.safetensors")
    assert saved == report
    torch.testing.assert_close(again(rows[1][0]), ridge(rows[1][0]))
    res = kt.run(same_pair, again, items[:4], max_new_tokens=5)
    text = [p["text"] for p in res["predictions"]["text"]]
    assert [p["text"] for p in res["predictions"]["translated"]] == text
    # every item asks the same question, so item i given item i+1's message answers as item i+1 does
    assert [p["text"] for p in res["predictions"]["mismatched"]] == text[1:] + text[:1]
    assert set(res["scores"]) == set(kt.METHODS)
    with pytest.raises(LCFError, match="unknown methods"):
        kt.run(same_pair, ridge, items[:1], ["fused"])


def test_text_the_receiver_holds_itself_comes_first_and_is_kept(same_pair, real_receiver_tokenizer):
    own, ctx = CONTEXTS[0], CONTEXTS[1]
    split = XCExample(id="s", sharer_context=ctx, question="Who keeps goats?", answers=["Bo"], receiver_context=own)
    joined = XCExample(id="j", sharer_context=f"{own}\n\n{ctx}", question="Who keeps goats?", answers=["Bo"])
    x, y, p = same_pair.features(split)
    _, _, q = same_pair.features(joined)
    assert p.a > q.a and p.b == q.b and len(x) == len(y) == p.b - p.a  # only the sharer's part is translated
    span = kt.context_span(real_receiver_tokenizer, split.question, ctx, "auto", own)
    assert real_receiver_tokenizer.decode(span.ids[span.a:span.b]).strip() == ctx
    assert span.text.index(own) < span.start
    ridge = kt.Ridge(torch.eye(y.shape[1], dtype=y.dtype), torch.zeros(y.shape[1], dtype=y.dtype),
                     torch.ones(y.shape[1], dtype=y.dtype), torch.zeros(y.shape[1], dtype=y.dtype))
    only_own = XCExample(id="o", sharer_context=own, question="Who keeps goats?", answers=["Bo"])
    res = kt.run(same_pair, ridge, [split, joined, only_own], ["alone", "text", "zero"], max_new_tokens=5)
    text = [r["text"] for r in res["predictions"]["text"]]
    assert text[0] == text[1]  # the same prompt, read by the receiver itself, whichever part is "sent"
    assert res["predictions"]["alone"][0]["text"] == text[2]  # alone = the receiver reading only its own text
    head = p.view.layer(0)[0][:, :, :p.a]
    zero, _ = kt.unflat_kv(torch.zeros_like(y), p, same_pair.receiver_rope)
    torch.testing.assert_close(zero.layer(0)[0][:, :, :p.a], head)  # the zero control keeps the receiver's own text


def test_finetune_skips_contexts_longer_than_a_receivers_window(real_receiver_tokenizer, real_sharer_tokenizer):
    import kv_tune
    from lcf.models.rows import WindowError

    receiver = tiny_gemma3(vocab_size=len(real_receiver_tokenizer), sliding_window=64)
    sharer = tiny_llama(vocab_size=len(real_sharer_tokenizer), layers=2)
    pair = kt.Pair(receiver, real_receiver_tokenizer, sharer, real_sharer_tokenizer)
    items = _items()
    long = XCExample(id="long", sharer_context=" ".join(CONTEXTS), question="Who?", answers=["x"])
    with pytest.raises(WindowError, match="receiver's prompt .* sliding-window"):
        pair.features(long)
    skipped: list[str] = []
    rows = list(kt.rows_that_fit(pair, [items[0], long] + items[1:], skipped))
    assert skipped == ["long"] and len(rows) == len(items)
    ridge, _ = kt.Ridge.fit(iter(rows[2:]), rows[:2], lambdas=(1e-3,), chunk=16)
    log = kv_tune.finetune(pair, ridge.cut(4), [long] + items, steps=1, batch_size=2,
                           log_every=0)
    assert (log[-1]["items"], log[-1]["skipped"]) == (len(items), 1)
    with pytest.raises(LCFError, match="fit the models' windows"):
        kv_tune.finetune(pair, ridge.cut(4), [long], steps=1, log_every=0)


def test_a_second_stage_goes_on_from_a_tuned_map_of_the_same_ridge(same_pair, tmp_path):
    from types import SimpleNamespace

    import kv_tune

    rows = [same_pair.features(it)[:2] for it in _items()]
    ridge, report = kt.Ridge.fit(iter(rows[2:]), rows[:2], lambdas=(1e-6,), chunk=16)
    report |= {"sharer": "s", "receiver": "r"}
    args = SimpleNamespace(train=[["type=fact_transfer", "num_train=6", "num_val=2"]], train_items=[4],
                           data_root=None, seed=0, rank=8, finetune_steps=2, lr=1e-2, mse_weight=0.1,
                           features_dtype="float32", translator="RIDGE", init=None, tuned=str(tmp_path / "a.st"))
    first, rep1 = kv_tune.tuned_from_args(args, same_pair, ridge, report)
    args.tuned, args.init, args.rank = str(tmp_path / "b.st"), str(tmp_path / "a.st"), 99  # rank comes from --init
    second, rep2 = kv_tune.tuned_from_args(args, same_pair, ridge, report)
    assert rep2["rank"] == 8 and rep2["finetune"]["after"] == rep1["finetune"]
    assert not torch.equal(first.down, second.down)
    assert rep2["finetune"]["steps"] == 2 and (tmp_path / "b.st").exists()
    args.tuned = str(tmp_path / "c.st")
    with pytest.raises(LCFError, match="another ridge map"):
        kv_tune.tuned_from_args(args, same_pair, ridge, report | {"lambda": 5.0})


def test_low_rank_cut_fine_tunes_and_round_trips(same_pair, tmp_path):
    import kv_tune

    items = [XCExample(id=str(i), sharer_context=c, question="Who is it about?", answers=[c.split()[0]])
             for i, c in enumerate(CONTEXTS)]
    rows = [same_pair.features(it)[:2] for it in items]
    ridge, report = kt.Ridge.fit(iter(rows[2:]), rows[:2], lambdas=(1e-6,), chunk=16)
    full = ridge.cut(ridge.w.shape[0])
    torch.testing.assert_close(full(rows[0][0]), ridge(rows[0][0]), atol=1e-4, rtol=1e-4)
    with pytest.raises(LCFError, match="rank must be"):
        ridge.cut(0)
    low = ridge.cut(8).double()
    before = low.down.detach().clone()
    log = kv_tune.finetune(same_pair, low, items, steps=6, batch_size=4, lr=1e-2, mse_weight=0.1, log_every=0)
    assert len(log) == 6 and not torch.equal(before, low.down.detach())
    assert sum(r["ce"] for r in log[-2:]) < sum(r["ce"] for r in log[:2])
    assert all(p.requires_grad for p in same_pair.receiver.parameters())  # its flags restored
    half = ridge.cut(8).double()
    full = ridge.cut(8).double()
    a = kv_tune.finetune(same_pair, half, items, steps=2, batch_size=4, lr=1e-2, log_every=0,
                         features_dtype=torch.float16)
    b = kv_tune.finetune(same_pair, full, items, steps=2, batch_size=4, lr=1e-2, log_every=0)
    assert a[0]["ce"] == pytest.approx(b[0]["ce"], rel=1e-2)
    assert a[0]["mse"] != b[0]["mse"]  # rows kept in fp16 (the CE, in fp32, may not see the rounding)
    x, y, p = same_pair.features(items[0])
    view, start = kt.unflat_kv(y, head_only(p), same_pair.receiver_rope)
    want, _ = kt.unflat_kv(y, p, same_pair.receiver_rope)
    assert start == p.b and all(torch.equal(k, w) for k, w in zip(view.keys, want.keys))
    low.save(tmp_path / "low.safetensors", {"rank": 8})
    again, saved = kv_tune.LowRank.load(tmp_path / "low.safetensors")
    assert saved == {"rank": 8}
    torch.testing.assert_close(again.double()(rows[1][0]), low(rows[1][0]))
    ridge.save(tmp_path / "ridge.safetensors", report)
    with pytest.raises(LCFError, match="rank-r"):
        kv_tune.LowRank.load(tmp_path / "ridge.safetensors")


def test_training_items_mix_several_sets_with_their_own_counts():
    import kv_tune

    a = ["type=fact_transfer", "num_train=6", "num_val=2", "seed=0"]
    b = ["type=fact_transfer", "num_train=6", "num_val=2", "seed=1", "values=open"]
    items, used = kv_tune.training_items([a, b], [2, 5], None, seed=0)
    assert [u["items"] for u in used] == [2, 5] and used[1]["values"] == "open"
    assert len(items) == 7 and all(it.answers for it in items)
    again, _ = kv_tune.training_items([a, b], [2, 5], None, seed=0)
    assert [it.id for it in again] == [it.id for it in items]  # the mixture is reproducible
    one, used = kv_tune.training_items([a, b], [3], None, seed=0)
    assert len(one) == 6 and [u["items"] for u in used] == [3, 3]


def test_bad_inputs_are_refused_with_their_reason():
    import kv_tune

    with pytest.raises(LCFError, match="training rows and held-out rows"):
        kt.Ridge.fit(iter([]), [])
    with pytest.raises(LCFError, match="do not chain"):
        kv_tune.LowRank(torch.zeros(4, 2), torch.zeros(3, 5), torch.zeros(4), torch.ones(4), torch.zeros(5))
    with pytest.raises(LCFError, match="one number or one per --fit"):
        kt.fit_contexts([["type=fact_transfer"], ["type=fact_transfer"]], [1, 2, 3], None, 0)
    with pytest.raises(LCFError, match="one number or one per --train"):
        kv_tune.training_items([["type=fact_transfer"]], [1, 2], None, 0)
    with pytest.raises(LCFError, match="needs --train"):
        kv_tune.training_items([], [400], None, 0)
    with pytest.raises(LCFError, match="nothing to translate with"):
        kt.main(["r", "s", "--out", "unused", "--items", "2",
                 "--data", "type=fact_transfer", "num_train=4", "num_val=2"])
    with pytest.raises(LCFError, match="does not exist"):
        kt.main(["r", "s", "--out", "unused", "--data", "type=fact_transfer", "num_train=4", "num_val=2",
                 "--exclude", "no/such/results.json", "--translator", "unused.safetensors"])


def test_exclude_leaves_out_items_an_earlier_report_scored(tmp_path):
    import json

    from lcf.eval.xc import ids_in_results

    _, val, _ = kt._dataset(["type=fact_transfer", "num_train=4", "num_val=3"], None)
    (tmp_path / "a.json").write_text(json.dumps({"item_ids": [val[0].id]}))
    (tmp_path / "b.json").write_text(json.dumps({"item_ids": [str(it.id) for it in val]}))
    assert ids_in_results([tmp_path / "a.json"]) == {str(val[0].id)}
    (tmp_path / "bad.json").write_text(json.dumps({"scores": {}}))
    with pytest.raises(LCFError, match="no 'item_ids' list"):
        ids_in_results([tmp_path / "bad.json"])
    with pytest.raises(LCFError, match="left none of the 3 validation items; raise the data's val_size"):
        kt.main(["r", "s", "--out", str(tmp_path / "o"), "--data", "type=fact_transfer", "num_train=4", "num_val=3",
                 "--exclude", str(tmp_path / "a.json"), str(tmp_path / "b.json")])


def test_batches_of_items_give_the_answers_of_one_batch(same_pair):
    """run() reads items a batch at a time; the mismatched control still takes the next item's rows (the first
    item's for the last), across batch boundaries."""
    items = _items()[:5]
    rows = [same_pair.features(it)[:2] for it in _items()]
    ridge, _ = kt.Ridge.fit(iter(rows[2:]), rows[:2], lambdas=(1e-9,), chunk=16)
    whole = kt.run(same_pair, ridge, items, ["translated", "mismatched"], max_new_tokens=4, batch_size=8)
    parts = kt.run(same_pair, ridge, items, ["translated", "mismatched"], max_new_tokens=4, batch_size=2)
    with pytest.raises(LCFError, match="must be at least 1, got 0"):
        kt.run(same_pair, ridge, items, ["translated"], batch_size=0)
    assert parts["predictions"] == whole["predictions"] and parts["scores"] == whole["scores"]
    text = {p["id"]: p["text"] for p in whole["predictions"]["translated"]}
    assert [p["text"] for p in whole["predictions"]["mismatched"]] == [text[it.id] for it in items[1:] + items[:1]]
