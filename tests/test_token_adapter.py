"""Per-token adapters (lcf.runtime.token_kv / token_adapter): export (lcf.export), load, send, receive, refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_llama
from lcf.data.xc.features import XCExample
from lcf.errors import LCFError
from lcf.export import export_token_map
from lcf.models.kv import prefill
from lcf.models.loading import LoadedModel
from lcf.models.rows import context_span, greedy, prepare_item, stop_ids
from lcf.runtime import AdapterError, LatentMessage, MessageError, TokenAdapter, TokenMessage, load_adapter
from lcf.runtime.token_kv import LowRank
from lcf.token_map.rows import TokenRows

REPO = Path(__file__).resolve().parent.parent
CONTEXT = "Ada Lindqvist moved to Tromso a few years ago. She works as a luthier."
QUESTION = "Where does Ada Lindqvist live?"


def translated_answers(rows: TokenRows, low: LowRank, items: list[XCExample], max_new_tokens: int) -> list[str]:
    """The evaluated path, without the runtime: the map's rows of each item's context in place of the receiver's
    own, then greedy answers (what the runtime's send + receive must reproduce)."""
    from lcf.models.rows import unflat_kv

    model, tok = rows.receiver, rows.receiver_tokenizer
    views, tails, starts = [], [], []
    for it in items:
        x, y, p = rows.features(it)
        view, start = unflat_kv(low(x).to(y.dtype), p, rows.receiver_rope)
        views.append(view), tails.append(p.tail), starts.append(start)
    new = greedy(model, views, tails, starts, max_new_tokens, stop_ids(model, tok))
    return [tok.decode(t, skip_special_tokens=True).strip() for t in new]


def _identity(dim: int) -> LowRank:
    eye = torch.eye(dim)
    return LowRank(eye, eye, torch.zeros(dim), torch.ones(dim), torch.zeros(dim))


@pytest.fixture(scope="module")
def tiny(real_receiver_tokenizer, tmp_path_factory):
    """One tiny model on both sides and the identity map: the message must be the receiver's own cache."""
    tok = real_receiver_tokenizer
    model = tiny_llama(vocab_size=len(tok), layers=2).eval()
    loaded = LoadedModel(name="smollm2-135m-instruct", model=model, tokenizer=tok, card=None, path="")
    folder = export_token_map(_identity(32), tmp_path_factory.mktemp("tok") / "adapter", sharer=loaded,
                                  receiver=loaded, training={"note": "identity"})
    return folder, model, tok


def _load(tiny, **kw) -> TokenAdapter:
    folder, model, tok = tiny
    return load_adapter(folder, sharer=(model, tok), receiver=(model, tok), **kw)


def test_send_receive_reads_like_the_context_itself(tiny):
    folder, model, tok = tiny
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["translator"] == {"type": "token_map", "args": {"rank": 32}}
    adapter = _load(tiny)
    assert isinstance(adapter, TokenAdapter) and adapter.is_xc
    msg = adapter.send(CONTEXT)
    span = context_span(tok, QUESTION, CONTEXT)
    assert msg.codes.shape == (span.b - span.a, 32) and msg.header["head"] == span.a
    p = prepare_item(model, tok, QUESTION, CONTEXT)
    want = tok.decode(greedy(model, [p.view], [p.tail], [p.b], 8, stop_ids(model, tok))[0], skip_special_tokens=True)
    data = msg.to_bytes()
    assert adapter.receive(data, QUESTION, max_new_tokens=8) == want.strip()
    assert adapter.receive([data, msg], [QUESTION, QUESTION], max_new_tokens=8) == [want.strip()] * 2
    again = TokenMessage.from_bytes(data)
    assert torch.equal(again.codes, msg.codes) and again.header["tokens"] == len(msg.codes)


def test_an_adapter_exported_before_token_map_was_registered_still_loads(tiny, tmp_path):
    import shutil

    folder, model, tok = tiny
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    cfg = json.loads((old / "adapter_config.json").read_text())
    cfg["translator"]["type"] = "token_kv_lowrank"  # what the research driver's exporter wrote
    (old / "adapter_config.json").write_text(json.dumps(cfg))
    adapter = load_adapter(old, sharer=(model, tok), receiver=(model, tok))
    assert isinstance(adapter, TokenAdapter)
    assert adapter.receive(adapter.send(CONTEXT), QUESTION, max_new_tokens=4) == _load(tiny).receive(
        _load(tiny).send(CONTEXT), QUESTION, max_new_tokens=4)


def test_a_question_containing_the_placeholder_letter_is_received(tiny):
    """The receiver's prompt is built around the placeholder "x"; an "x" in the question (or in its own text)
    must not be taken for the context (it once was: the last "x" of the prompt was taken)."""
    folder, model, tok = tiny
    adapter = _load(tiny)
    question = "Which box next to the taxi is Ada's?"
    assert context_span(tok, question, "x").a == context_span(tok, "?", "x").a
    assert context_span(tok, question, "x", receiver_context="an extra x").start > 0
    p = prepare_item(model, tok, question, CONTEXT)
    want = tok.decode(greedy(model, [p.view], [p.tail], [p.b], 8, stop_ids(model, tok))[0], skip_special_tokens=True)
    assert adapter.receive(adapter.send(CONTEXT), question, max_new_tokens=8) == want.strip()


def test_text_the_receiver_holds_itself_is_read_before_the_message(tiny, monkeypatch):
    from lcf.runtime import token_adapter

    folder, model, tok = tiny
    read = []
    monkeypatch.setattr(token_adapter, "prefill", lambda m, ids: read.append(tok.decode(ids[0])) or prefill(m, ids))
    own = "Bo Renner keeps three goats and a cat called Pilsner on a farm near Ghent."
    adapter = _load(tiny)
    msg = adapter.send(CONTEXT)
    got = adapter.receive(msg, [QUESTION, "Who keeps goats?"], own_context=own, max_new_tokens=8)
    # the evaluation's path: the receiver reads its own text, then the sharer's rows of the context
    items = [XCExample(id=str(i), sharer_context=CONTEXT, question=q, answers=["x"], receiver_context=own)
             for i, q in enumerate([QUESTION, "Who keeps goats?"])]
    assert got == translated_answers(TokenRows(model, tok, model, tok), adapter.map, items, 8)
    # one prefill: both questions share the prompt head up to the context (own text included), kept by the adapter
    assert len(read) == 1 and read[0].rstrip().endswith(own)
    adapter.receive(msg, QUESTION, max_new_tokens=2)  # another head (no own text): prefilled once, then kept
    adapter.receive(msg, QUESTION, max_new_tokens=2)
    assert len(read) == 2 and not read[1].rstrip().endswith(own)


def test_receiving_side_needs_no_sharer_and_int8_int4_shrink_the_message(tiny):
    sender = _load(tiny)
    receiver = _load(tiny, with_sharer=False)
    assert receiver.sharer is None
    msg = sender.send(CONTEXT)
    sizes = {q: len(msg.to_bytes(q)) for q in ("none", "int8", "int4")}
    assert sizes["none"] > sizes["int8"] > sizes["int4"]
    for q, tol in (("int8", 0.01), ("int4", 0.15)):
        codes = TokenMessage.from_bytes(msg.to_bytes(q)).codes
        assert ((codes - msg.codes).abs().amax(1) / msg.codes.abs().amax(1)).max() <= tol
        assert isinstance(receiver.receive(msg.to_bytes(q), QUESTION, max_new_tokens=4), str)
    with pytest.raises(LCFError, match="loaded without its sharer"):
        receiver.send(CONTEXT)
    folder, model, tok = tiny
    sender = load_adapter(folder, sharer=(model, tok), with_receiver=False)  # the receiver's tokenizer only
    assert sender.receiver is None and torch.equal(sender.send(CONTEXT).codes, msg.codes)
    with pytest.raises(LCFError, match="loaded without its receiver"):
        sender.receive(msg, QUESTION)
    with pytest.raises(LCFError, match="loaded without its receiver"):
        sender.answer([QUESTION])


def test_eval_xc_scores_a_per_token_adapter_and_its_baselines(tiny):
    from lcf.eval.xc import build_xc_systems, evaluate_xc

    adapter = _load(tiny)
    contexts = [CONTEXT, "Bo Renner keeps three goats near Ghent.", "Cleo Marsh rows on the river in Jakarta."]
    items = [XCExample(id=str(i), sharer_context=c, question=QUESTION, answers=["Tromso"])
             for i, c in enumerate(contexts)]
    chosen = ["receiver", "full", "text", "lcf-x", "int8", "zero", "mean", "mismatched"]
    systems = build_xc_systems(adapter, chosen, text_tokens=[3], has_own=False)
    res = evaluate_xc(systems, items, max_new_tokens=6, batch_size=2, latency_runs=1)
    names = ["receiver alone", "receiver + full context", "text-3", "per-token message", "per-token message int8",
             "per-token message (zero K/V)", "per-token message (zero code: the map's mean K/V)",
             "per-token message (mismatched)"]
    assert list(res["scores"]) == names
    texts = {n: [p["text"] for p in res["predictions"][n]] for n in names}
    # one model on both sides, identity map: the message is the receiver's own cache of the context
    assert texts["per-token message"] == texts["receiver + full context"]
    assert texts["receiver alone"] == adapter.answer([QUESTION] * 3, max_new_tokens=6)
    # zero K/V: the receiver reads all-zero keys and values where the context was (the map's rows are zeroed)
    p = prepare_item(adapter.receiver.model, adapter.receiver.tokenizer, QUESTION, CONTEXT)
    from lcf.models.rows import unflat_kv

    rows = torch.zeros(p.b - p.a, adapter.map.up.shape[1])
    view, start = unflat_kv(rows, type(p)(p.view, p.a, p.a, p.tail), adapter._ropes["receiver"])
    model, tok = adapter.receiver.model, adapter.receiver.tokenizer
    want = tok.decode(greedy(model, [view], [p.tail], [start], 6, stop_ids(model, tok))[0], skip_special_tokens=True)
    assert texts["per-token message (zero K/V)"][0] == want.strip()
    scores = res["scores"]
    assert scores["per-token message"]["bytes_sent"] > scores["per-token message int8"]["bytes_sent"] > 0
    assert scores["receiver alone"]["bytes_sent"] == 0 and "ttft_ms" in scores["per-token message"]
    assert adapter.max_context_tokens() == 256  # the tiny models' max positions
    with pytest.raises(LCFError, match="not spans; drop --spans"):
        build_xc_systems(adapter, ["lcf-x"], spans="sentence")
    with pytest.raises(LCFError, match="2 own contexts for 1 questions"):
        adapter.answer([QUESTION], ["a", "b"])


def test_bad_messages_and_calls_are_refused(tiny, tmp_path):
    folder, model, tok = tiny
    adapter = _load(tiny)
    data = adapter.send(CONTEXT).to_bytes("int8")
    with pytest.raises(MessageError, match="truncated or corrupted"):
        adapter.receive(data[:50], QUESTION)
    tampered = bytearray(data)
    tampered[-3] ^= 0xFF
    with pytest.raises(MessageError, match="checksum"):
        adapter.receive(bytes(tampered), QUESTION)
    with pytest.raises(MessageError, match="not an LCF-X summary"):
        LatentMessage.from_bytes(data)
    summary = LatentMessage({0: torch.zeros(1, 1, 4)}, {0: torch.zeros(1, 1, 4)}, {}).to_bytes()
    with pytest.raises(MessageError, match="not a per-token message"):
        adapter.receive(summary, QUESTION)
    other = export_token_map(LowRank(*(t * 2 if i < 2 else t for i, t in enumerate(_identity(32).state_dict()
                                                                                        .values()))),
                             tmp_path / "other", sharer=LoadedModel("s", model, tok, None, ""),
                             receiver=LoadedModel("smollm2-135m-instruct", model, tok, None, ""))
    with pytest.raises(MessageError, match="made for adapter"):
        load_adapter(other, sharer=(model, tok), receiver=(model, tok)).receive(data, QUESTION)
    with pytest.raises(LCFError, match="2 own contexts for 1 questions"):
        adapter.receive(data, QUESTION, own_context=["a", "b"])
    with pytest.raises(LCFError, match="no spans"):
        adapter.send(CONTEXT, spans="sentence")
    with pytest.raises(LCFError, match="2 messages and 1 own contexts for 1 questions"):
        adapter.receive([data, data], [QUESTION])


def test_broken_folders_are_refused(tiny, tmp_path):
    import shutil

    folder, model, tok = tiny
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["translator"]["args"]["rank"] = 8
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="do not match the config"):
        load_adapter(bad, sharer=(model, tok), receiver=(model, tok))
    with pytest.raises(AdapterError, match="leave nothing to run"):
        load_adapter(folder, sharer=(model, tok), receiver=(model, tok), with_sharer=False, with_receiver=False)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2, 2)}, str(bad / "adapter.safetensors"))
    with pytest.raises(AdapterError, match="rank-r per-token map"):
        load_adapter(bad, sharer=(model, tok), receiver=(model, tok))


@pytest.mark.real
def test_real_pair_runtime_matches_the_evaluated_system_and_the_cli(tmp_path, real_receiver, real_sharer):
    """A random rank-16 map for Gemma-3-270M -> SmolLM2-135M-Instruct (answers are noise, the mechanics are
    not): the runtime's answer equals the evaluated path's for the same map, and `lcf send` (in this process) and
    `lcf receive` (in another) run it, the sender without the receiver model."""
    from lcf.cli import main

    torch.manual_seed(0)
    pair = TokenRows(real_receiver.model, real_receiver.tokenizer, real_sharer.model, real_sharer.tokenizer)
    item = XCExample(id="0", sharer_context=CONTEXT, question=QUESTION, answers=["Tromso"])
    x, y, _ = pair.features(item)
    low = LowRank(torch.randn(x.shape[1], 16) * 0.02, torch.randn(16, y.shape[1]) * 0.02, x.mean(0),
                  x.std(0) + 1e-3, y.mean(0))
    folder = export_token_map(low, tmp_path / "adapter", sharer=real_sharer, receiver=real_receiver)
    adapter = load_adapter(folder, sharer=real_sharer, receiver=real_receiver)
    msg = adapter.send(CONTEXT)
    assert msg.codes.shape == (len(x), 16)
    want = translated_answers(pair, adapter.map, [item], 16)[0]
    assert adapter.receive(msg.to_bytes(), QUESTION, max_new_tokens=16) == want
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    out = tmp_path / "msg.safetensors"
    assert main(["send", str(folder), "--context", CONTEXT, "--out", str(out), "--quantize", "int4"]) == 0
    got = subprocess.run([sys.executable, "-m", "lcf.cli", "receive", str(folder), str(out), "--question", QUESTION,
                          "--max-new-tokens", "6"], capture_output=True, text=True, env=env, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.strip() == adapter.receive(out.read_bytes(), QUESTION, max_new_tokens=6)


def test_too_long_contexts_and_prompts_are_refused_before_any_compute(tiny, monkeypatch):
    from lcf.runtime.limits import LengthError

    adapter = _load(tiny)
    msg = adapter.send(CONTEXT)
    monkeypatch.setattr(adapter.receiver.model.config, "max_position_embeddings", len(msg.codes) + 10)
    with pytest.raises(LengthError, match="receiver prompt 0 .* more than the"):
        adapter.receive(msg, QUESTION, max_new_tokens=8)
    monkeypatch.setattr(adapter.sharer.model.config, "max_position_embeddings", 8)
    with pytest.raises(LengthError, match="the context has .* receiver tokens, more than the 8 positions"):
        adapter.send(CONTEXT)
