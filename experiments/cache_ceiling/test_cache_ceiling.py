"""experiments/cache_ceiling (run with `python -m pytest experiments/cache_ceiling`): the receiver reading its own
compressed cache of the context."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_llama
from lcf.data.xc.features import XCExample
from lcf.errors import LCFError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the experiment's own module
import cache_ceiling as cc  # noqa: E402

QUESTION = "Where does Ada Lindqvist live?"
CONTEXT = "Ada Lindqvist moved to Tromsø a few years ago. She works as a luthier."


@pytest.fixture(scope="module")
def setup(real_receiver_tokenizer):
    model = tiny_llama(vocab_size=len(real_receiver_tokenizer), layers=2).double()
    return model, real_receiver_tokenizer


def _full_prompt_logits(model, tok, question, context):
    from lcf.align.templates import format_messages
    from lcf.data.xc.features import encode_prompt, receiver_message

    text = format_messages(tok, [{"role": "user", "content": receiver_message(question, context)}]).text
    ids = torch.tensor([encode_prompt(tok, text)[0]])
    return model(input_ids=ids).logits[0]


def _tail_logits(model, p: cc.Prepared, view, start):
    from lcf.models.kv import cache_kwargs

    pos = torch.arange(start, start + len(p.tail))[None]
    mask = torch.ones(1, view.seq_len + len(p.tail), dtype=torch.long)
    return model(input_ids=p.tail[None], position_ids=pos, attention_mask=mask, use_cache=True,
                 **cache_kwargs(model, view.to_cache(model))).logits[0]


def test_context_span_and_text_method_equal_the_full_prompt(setup):
    model, tok = setup
    p = cc.prepare_item(model, tok, QUESTION, CONTEXT)
    full = _full_prompt_logits(model, tok, QUESTION, CONTEXT)
    assert p.b + len(p.tail) == full.shape[0]
    from lcf.align.templates import format_messages
    from lcf.data.xc.features import encode_prompt, receiver_message

    text = format_messages(tok, [{"role": "user", "content": receiver_message(QUESTION, CONTEXT)}]).text
    ids = encode_prompt(tok, text)[0]
    assert tok.decode(ids[p.a:p.b]).strip() == CONTEXT
    for method in ("text", "mean-1", "rmean-1", "last-1"):
        view, start = cc.compress(p, method, rope=cc.rotary(model))
        assert start == p.b and view.seq_len == p.b
        torch.testing.assert_close(_tail_logits(model, p, view, start), full[p.b:], rtol=1e-9, atol=1e-9)


def test_compression_shapes_and_values(setup):
    model, tok = setup
    p = cc.prepare_item(model, tok, QUESTION, CONTEXT)
    n = p.b - p.a
    k, v = p.view.layer(1)
    view, start = cc.compress(p, "mean-4")
    assert start == p.b and view.seq_len == p.a + -(-n // 4)
    torch.testing.assert_close(view.keys[1][:, :, p.a], k[:, :, p.a:p.a + 4].mean(2))
    torch.testing.assert_close(view.values[1][:, :, :p.a], v[:, :, :p.a])  # the head is untouched
    last, _ = cc.compress(p, "last-4")
    torch.testing.assert_close(last.values[0][:, :, p.a + 1], p.view.values[0][:, :, p.a + 7])
    one, _ = cc.compress(p, "mean-all")
    assert one.seq_len == p.a + 1
    zero, _ = cc.compress(p, "zero")
    assert zero.keys[0][:, :, p.a:].abs().sum() == 0 and zero.keys[0][:, :, :p.a].abs().sum() > 0
    for q in ("int8", "int4"):
        qv, _ = cc.compress(p, q)
        err = (qv.keys[1][:, :, p.a:] - k[:, :, p.a:p.b]).abs().max() / k[:, :, p.a:p.b].abs().max()
        assert 0 < err < (0.01 if q == "int8" else 0.2)


def test_rope_mean_pools_keys_without_their_phase(setup):
    model, tok = setup
    p = cc.prepare_item(model, tok, QUESTION, CONTEXT)
    rope = cc.rotary(model)
    k = p.view.keys[0][:, :, p.a:p.b]
    cos, sin = rope(torch.arange(p.a, p.b))
    raw = cc.turn(k, cos, -sin)
    torch.testing.assert_close(cc.turn(raw, cos, sin), k)  # undo then redo the rotation
    view, _ = cc.compress(p, "rmean-2", rope=rope)
    want = cc.turn(raw[:, :, 0:2].mean(2, keepdim=True), cos[1:2], sin[1:2])[:, :, 0]
    torch.testing.assert_close(view.keys[0][:, :, p.a], want)
    torch.testing.assert_close(view.values[0][:, :, p.a], p.view.values[0][:, :, p.a:p.a + 2].mean(2))
    with pytest.raises(LCFError, match="rotary"):
        cc.compress(p, "rmean-2")


def test_batched_greedy_equals_one_row_at_a_time(setup):
    model, tok = setup
    rows = [cc.prepare_item(model, tok, q, c) for q, c in
            [(QUESTION, CONTEXT), ("Who?", "Bo."), ("What does the third one keep?", CONTEXT + " " + CONTEXT)]]
    made = [cc.compress(p, "mean-2") for p in rows]
    batched = cc.greedy(model, [v for v, _ in made], [p.tail for p in rows], [s for _, s in made], 6, set())
    for p, (v, s), got in zip(rows, made, batched):
        assert cc.greedy(model, [v], [p.tail], [s], 6, set()) == [got]
        assert len(got) == 6


def test_rank_projection_is_exact_at_full_rank_and_lossy_below(setup):
    model, tok = setup
    fit = [cc.prepare_item(model, tok, f"Question {i}?", f"Person {i} lives in town {i * 7} near river {i}.")
           for i in range(12)]
    basis = cc.Basis.fit(fit)
    p = cc.prepare_item(model, tok, QUESTION, CONTEXT)
    dim = 2 * 2 * 4  # keys and values of 2 KV heads x 4
    full, _ = cc.compress(p, f"rank-{dim}", basis=basis)
    torch.testing.assert_close(full.keys[1], p.view.keys[1], rtol=1e-5, atol=1e-5)
    low, _ = cc.compress(p, "rank-2", basis=basis)
    assert (low.keys[1] - p.view.keys[1]).abs().max() > 1e-3
    with pytest.raises(LCFError, match="Basis"):
        cc.compress(p, "rank-2")


def test_mismatched_uses_the_other_items_context_and_tail_positions(setup):
    model, tok = setup
    p = cc.prepare_item(model, tok, QUESTION, CONTEXT)
    o = cc.prepare_item(model, tok, QUESTION, "Bo lives in Oslo and keeps a goat. He is a carpenter by trade.")
    view, start = cc.compress(p, "mismatched", other=o)
    assert start == p.a + (o.b - o.a) and view.seq_len == start
    torch.testing.assert_close(view.keys[0][:, :, p.a:], o.view.keys[0][:, :, o.a:o.b])


def test_late_question_is_computed_without_the_context(setup):
    """late-M: the question's K/V equal a pass over the whole prompt with the context masked out."""
    from lcf.align.templates import format_messages
    from lcf.data.xc.features import encode_prompt, receiver_message
    from transformers import DynamicCache

    from lcf.models.kv import cache_kwargs, extract_kv

    model, tok = setup
    p = cc.prepare_item(model, tok, QUESTION, CONTEXT)
    late = cc.late_tail(model, p)
    assert late.seq_len == len(p.tail) - 1
    text = format_messages(tok, [{"role": "user", "content": receiver_message(QUESTION, CONTEXT)}]).text
    ids = torch.tensor([encode_prompt(tok, text)[0][:-1]])
    mask = torch.ones_like(ids)
    mask[:, p.a:p.b] = 0
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model.model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(ids.shape[1])[None],
                    use_cache=True, **cache_kwargs(model.model, cache))
    ref = extract_kv(cache, model.config, seq_len=ids.shape[1])
    for layer in range(2):
        torch.testing.assert_close(late.keys[layer], ref.keys[layer][:, :, p.b:])
        torch.testing.assert_close(late.values[layer], ref.values[layer][:, :, p.b:])
    res = cc.run(model, tok, [XCExample(id="0", sharer_context=CONTEXT, question=QUESTION, answers=["x"])],
                 ["text", "late-text", "late-mean-2", "late-rank-2"], max_new_tokens=3,
                 fit=[XCExample(id=str(i), sharer_context=f"P{i} lives in T{i}.", question="Who?", answers=["x"])
                      for i in range(3)])
    assert res["scores"]["late-text"]["slots"] == res["scores"]["text"]["slots"]
    assert cc.valid_method("late-rank-64") and not cc.valid_method("late-late-text")


def test_refuses_sliding_windows_and_mismatched_without_another_item(real_receiver_tokenizer):
    from tests.conftest import tiny_gemma3

    tok = real_receiver_tokenizer
    with pytest.raises(LCFError, match="sliding-window"):
        cc.prepare_item(tiny_gemma3(vocab_size=len(tok), sliding_window=4), tok, QUESTION, CONTEXT)
    model = tiny_llama(vocab_size=len(tok))
    with pytest.raises(LCFError, match="another item"):
        cc.compress(cc.prepare_item(model, tok, QUESTION, CONTEXT), "mismatched")


def test_run_scores_and_rejects_unknown_methods(setup):
    model, tok = setup
    items = [XCExample(id=str(i), sharer_context=CONTEXT.replace("Tromsø", c), question=QUESTION, answers=[c])
             for i, c in enumerate(["Tromsø", "Bergen", "Oslo"])]
    res = cc.run(model, tok, items, ["text", "mean-2", "mismatched"], max_new_tokens=3)
    assert set(res["scores"]) == {"text", "mean-2", "mismatched"}
    assert [r["id"] for r in res["predictions"]["text"]] == ["0", "1", "2"]
    assert res["scores"]["mean-2"]["slots"] < res["scores"]["text"]["slots"]
    assert "| mean-2 |" in cc.format_table(res)
    with pytest.raises(LCFError, match="unknown methods"):
        cc.run(model, tok, items, ["mean-x"])


@pytest.mark.real
def test_real_receiver_answers_from_its_full_cache(real_receiver):
    """On SmolLM2 the unchanged cache answers as the full-context prompt does; a zero cache loses the fact."""
    items = [XCExample(id="0", sharer_context="Riran Lindilley moved to Munich a few years ago.",
                       question="In which city does Riran Lindilley live?", answers=["Munich"])]
    res = cc.run(real_receiver.model, real_receiver.tokenizer, items, ["text", "zero"], max_new_tokens=12)
    assert res["scores"]["text"]["contains"] == 1.0
    assert res["scores"]["zero"]["contains"] == 0.0
