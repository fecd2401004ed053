"""Cross-context data: span assignment, sharer/receiver features, collate of span ids, the datasets."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from lcf.align.templates import format_messages
from lcf.data import (
    BATCH_KEYS, ContextTooLongError, XCError, DataError, DataFileNotFoundError, FactTransferData,
    HotpotQAXCData, MuSiQueXCData, SpanError, SQuADXCData, XCExample, collate, receiver_features, receiver_message,
    sharer_features, split_spans, token_span_ids, xc_features,
)
from lcf.data.xc.features import DROP_CONTEXT
from lcf.data.features import DROP_EMPTY, DROP_PROMPT
from lcf.data.xc.qa import hotpot_paragraphs
from lcf.errors import LCFError, RecipeError
from lcf.eval.tasks import SQuAD, QAItem
from lcf.registry import datasets
from tests.tiny_tokenizers import tiny_receiver_tokenizer, tiny_sharer_tokenizer

CONTEXT = "The cat sat on the mat. The dog ran in the park!\n  \n\nNumbers like 12 and 345 appear.\n\n\nhello world."


@pytest.fixture(scope="module")
def rtok():
    return tiny_receiver_tokenizer()


@pytest.fixture(scope="module")
def stok():
    return tiny_sharer_tokenizer()


def split_paragraph_texts(text: str) -> list[str]:
    return [text[a:b] for a, b in split_spans(text, "paragraph")]


def check_span_ids(tokenizer, context: str, feats: dict) -> int:
    """Assert the span-id invariants on a tokenized sharer prompt; return the number of spans."""
    prompt = format_messages(tokenizer, [{"role": "user", "content": context}])
    c0, c1 = prompt.spans[0]
    enc = tokenizer(prompt.text, add_special_tokens=not prompt.text.startswith(tokenizer.bos_token or "\0"),
                    return_offsets_mapping=True)
    ids, span_ids = feats["sharer_prompt_ids"], feats["sharer_span_ids"]
    assert ids == enc["input_ids"] and len(span_ids) == len(ids)
    for (a, b), s in zip(enc["offset_mapping"], span_ids):
        if b <= a or b <= c0 or a >= c1:  # zero-length (BOS) or template text
            assert s == -1, (a, b, prompt.text[a:b])
        elif c0 <= a and b <= c1 and prompt.text[a:b].strip():  # a real content token
            assert s >= 0, (a, b, prompt.text[a:b])
    inside = [s for s in span_ids if s >= 0]
    assert inside == sorted(inside) and sorted(set(inside)) == list(range(len(set(inside))))
    return len(set(inside))


# -- split_spans -----------------------------------------------------------------------------------
def test_split_spans_paragraph_and_sentence():
    paragraphs = [CONTEXT[a:b] for a, b in split_spans(CONTEXT, "paragraph")]
    assert paragraphs == ["The cat sat on the mat. The dog ran in the park!", "Numbers like 12 and 345 appear.",
                          "hello world."]
    sentences = [CONTEXT[a:b] for a, b in split_spans(CONTEXT, "sentence")]
    assert sentences == ["The cat sat on the mat.", "The dog ran in the park!", "Numbers like 12 and 345 appear.",
                         "hello world."]
    text = 'He said "stop." Then left? Pi is 3.14 and e.g.x stays\nno break here\n\nlast one'
    assert [text[a:b] for a, b in split_spans(text, "sentence")] == [
        'He said "stop."', "Then left?", "Pi is 3.14 and e.g.x stays\nno break here", "last one"]
    assert split_spans("", "paragraph") == [] and split_spans(" \n\n\t ", "sentence") == []


def test_split_spans_tokens_needs_tokenizer(rtok):
    with pytest.raises(SpanError, match="needs the tokenizer"):
        split_spans(CONTEXT, "tokens")
    groups = split_spans(CONTEXT, "tokens", tokenizer=rtok, span_tokens=4)
    n_tokens = len(rtok(CONTEXT, add_special_tokens=False)["input_ids"])
    assert len(groups) == -(-n_tokens // 4) and groups == sorted(groups) and CONTEXT[groups[0][0]:].startswith("The")
    assert split_spans("", "tokens", tokenizer=rtok) == []


@pytest.mark.parametrize("scheme, span_tokens, needle", [
    ("sentense", 32, "Did you mean 'sentence'"), ("words", 32, "paragraph, sentence, tokens"),
    ("tokens", 0, "span_tokens must be an int >= 1"),
])
def test_split_spans_bad_scheme(scheme, span_tokens, needle):
    with pytest.raises(SpanError, match=re.escape(needle)):
        split_spans(CONTEXT, scheme, span_tokens=span_tokens)


# -- token_span_ids --------------------------------------------------------------------------------
def test_token_span_ids_by_hand():
    text = "<h>A b. C d.\n\nE f.</h>"
    content = (3, 18)  # "A b. C d.\n\nE f."
    offsets = [(0, 0), (0, 3), (3, 4), (4, 6), (6, 7), (7, 9), (9, 11), (11, 12), (12, 14), (14, 15), (15, 18),
               (18, 22)]
    assert token_span_ids(offsets, content, text, "paragraph") == [-1, -1, 0, 0, 0, 0, 0, 0, 0, 1, 1, -1]
    assert token_span_ids(offsets, content, text, "sentence") == [-1, -1, 0, 0, 0, 1, 1, 1, 1, 2, 2, -1]
    assert token_span_ids(offsets, content, text, "tokens", 4) == [-1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 2, -1]
    special = [False] * len(offsets)
    special[2] = True  # a special token inside the content is outside every span
    assert token_span_ids(offsets, content, text, "paragraph", special=special)[:4] == [-1, -1, -1, 0]
    assert token_span_ids(offsets, (3, 3), text, "paragraph") == [-1] * len(offsets)  # empty content


def test_token_span_ids_errors():
    with pytest.raises(SpanError, match="not inside the prompt"):
        token_span_ids([(0, 1)], (0, 99), "abc", "paragraph")
    with pytest.raises(SpanError, match="1 offsets but 2 special-token flags"):
        token_span_ids([(0, 1)], (0, 3), "abc", "paragraph", special=[False, True])
    with pytest.raises(SpanError, match="Did you mean 'paragraph'"):
        token_span_ids([(0, 1)], (0, 3), "abc", "paragraf")


# -- sharer / receiver features ----------------------------------------------------------------------
@pytest.mark.parametrize("which", ["chat", "plain_bos"])
def test_sharer_span_ids_on_template_and_specials(which, rtok, stok):
    tok = rtok if which == "chat" else stok  # ChatML template / plain template with a <s> BOS
    counts = {}
    for scheme in ("paragraph", "sentence", "tokens"):
        feats = sharer_features(tok, CONTEXT, spans=scheme, span_tokens=3)
        counts[scheme] = check_span_ids(tok, CONTEXT, feats)
    assert counts["paragraph"] == 3 and counts["sentence"] == 4 and counts["tokens"] > counts["sentence"]
    if which == "plain_bos":
        assert feats["sharer_prompt_ids"][0] == stok.bos_token_id and feats["sharer_span_ids"][0] == -1


def test_sharer_features_errors(rtok):
    for empty in ("", "  \n\n "):
        with pytest.raises(XCError, match="nothing to read"):
            sharer_features(rtok, empty)
    n = len(sharer_features(rtok, CONTEXT)["sharer_prompt_ids"])
    assert len(sharer_features(rtok, CONTEXT, max_tokens=n)["sharer_prompt_ids"]) == n
    with pytest.raises(ContextTooLongError) as err:
        sharer_features(rtok, CONTEXT, max_tokens=n - 1)
    msg = str(err.value)
    assert f"{n} tokens" in msg and f"max_tokens={n - 1}" in msg and "maximum positions" in msg and "shorter" in msg
    with pytest.raises(SpanError, match="Did you mean"):
        sharer_features(rtok, CONTEXT, spans="sentences")


def test_receiver_message_matches_eval_prompt(rtok):
    for ctx in ("", "Some own context.\n\nMore."):
        item = QAItem(id="x", question=" Who? ", context=ctx, answers=["a"])
        assert receiver_message(" Who? ", ctx) == SQuAD.__new__(SQuAD).prompt(item)  # the evaluation prompt
    assert receiver_message("Who?") == "Question: Who?\nAnswer with a short phrase."
    f = receiver_features(rtok, "What is the answer?")
    n = len(f["receiver_prompt_ids"])
    assert f["align_index"] == [0] * n and f["align_mask"] == [True] * n
    assert rtok.decode(f["receiver_prompt_ids"]).endswith("<|im_start|>assistant\n")
    with pytest.raises(XCError, match="question is empty"):
        receiver_features(rtok, "  ")


def test_xc_features_and_drop_reasons(rtok, stok):
    ex = XCExample("e1", CONTEXT, "What is the answer?", ["The dog"], source="mem")
    f = xc_features(ex, rtok, stok, index=7)
    assert rtok.decode(f["response_ids"]) == "The dog<|im_end|>"
    assert f["receiver_prompt_ids"] == receiver_features(rtok, ex.question)["receiver_prompt_ids"]
    assert f["sharer_span_ids"] == sharer_features(stok, CONTEXT)["sharer_span_ids"]
    assert (f["source"], f["index"], f["id"]) == ("mem", 7, "e1")
    n_s, n_r = len(f["sharer_prompt_ids"]), len(f["receiver_prompt_ids"])
    assert xc_features(ex, rtok, stok, max_context_tokens=n_s - 1) == DROP_CONTEXT
    assert xc_features(ex, rtok, stok, max_prompt_tokens=n_r - 1) == DROP_PROMPT
    assert len(xc_features(ex, rtok, stok, max_response_tokens=1)["response_ids"]) == 1
    for answers in ([], [" "]):
        assert xc_features(XCExample("e2", CONTEXT, "Q?", answers), rtok, stok) == DROP_EMPTY
    with pytest.raises(XCError) as err:
        xc_features(XCExample("bad", "", "Q?", ["a"]), rtok, stok)
    assert "nothing to read" in str(err.value) and any("'bad'" in n for n in err.value.__notes__)


# -- collate -----------------------------------------------------------------------------------------
def feature(r, s, spans=None):
    f = {"receiver_prompt_ids": r, "sharer_prompt_ids": s, "align_index": [0] * len(r),
         "align_mask": [True] * len(r), "response_ids": [5]}
    if spans is not None:
        f["sharer_span_ids"] = spans
    return f


def test_collate_left_pads_span_ids():
    b = collate([feature([1, 2], [7, 8, 9], [-1, 0, 1]), feature([3], [6], [0])], 0, 4)
    assert b["sharer_prompt_ids"].tolist() == [[7, 8, 9], [4, 4, 6]]
    assert b["sharer_span_ids"].tolist() == [[-1, 0, 1], [-1, -1, 0]] and b["sharer_span_ids"].dtype == torch.long
    plain = collate([feature([1, 2], [7, 8, 9]), feature([3], [6])], 0, 4)
    assert tuple(plain) == BATCH_KEYS
    with pytest.raises(LCFError, match=r"features \[1\] lack 'sharer_span_ids'"):
        collate([feature([1], [7], [0]), feature([3], [6])], 0, 4)
    with pytest.raises(LCFError, match="2 sharer prompt ids but 1 sharer_span_ids"):
        collate([feature([1], [7, 8], [0])], 0, 4)


# -- fact_transfer -------------------------------------------------------------------------------------
NAME = re.compile(r"\b([A-Z][a-z]+) ([A-Z][a-z]+)\b")


def names(examples):
    out = set()
    for e in examples:
        out |= set(NAME.findall(e.sharer_context + "\n" + e.receiver_context + "\n" + e.question))
    return out


def test_fact_transfer_deterministic_and_disjoint():
    a = FactTransferData(num_train=60, num_val=20, seed=3)
    assert a.examples() == FactTransferData(num_train=60, num_val=20, seed=3).examples()
    assert a.examples() != FactTransferData(num_train=60, num_val=20, seed=4).examples()
    # the validation set does not depend on num_train
    assert FactTransferData(num_train=5, num_val=20, seed=3).split_examples()[1] == a.split_examples()[1]
    train, val = a.split_examples()
    assert len(train) == 60 and len(val) == 20
    tn, vn = names(train), names(val)
    assert tn and vn and not {f for f, _ in tn} & {f for f, _ in vn} and not {l for _, l in tn} & {l for _, l in vn}


@pytest.mark.parametrize("mode", ["none", "half"])
def test_fact_transfer_answer_only_on_sharer_side(mode, rtok, stok):
    data = FactTransferData(num_train=40, num_val=10, num_paragraphs=4, receiver_context=mode, seed=1)
    for ex in data.examples():
        answer = ex.answers[0]
        assert answer in ex.sharer_context
        assert answer.lower() not in receiver_message(ex.question, ex.receiver_context).lower()
        assert len(split_spans(ex.sharer_context, "paragraph")) == (4 if mode == "none" else 2)
        assert bool(ex.receiver_context) == (mode == "half")
    train, val = data.prepare(rtok, stok)
    assert len(train) == 40 and len(val) == 10
    for f, ex in zip(val, data.split_examples()[1]):
        assert ex.answers[0].lower() not in rtok.decode(f["receiver_prompt_ids"]).lower()
        assert max(f["sharer_span_ids"]) == (3 if mode == "none" else 1)
    # "half" hands out paragraphs of the same worlds as "none"
    none = FactTransferData(num_train=40, num_val=10, num_paragraphs=4, seed=1).examples()
    for full, half in zip(none, data.examples()):
        assert set(split_paragraph_texts(full.sharer_context)) == set(
            split_paragraph_texts(half.sharer_context) + split_paragraph_texts(half.receiver_context))


def test_fact_transfer_repeat_fraction_turns_training_questions_into_repeats():
    from lcf.data.fact_transfer import REPEAT_QUESTION

    kw = dict(num_train=200, num_val=30, values="open", phrasing="varied", num_paragraphs=[1, 2], seed=2)
    plain, mixed = FactTransferData(**kw), FactTransferData(**kw, repeat_fraction=0.5)
    (pt, pv), (mt, mv) = plain.split_examples(), mixed.split_examples()
    assert pv == mv  # validation always asks the question
    repeats = [m for m in mt if m.question == REPEAT_QUESTION]
    assert 70 < len(repeats) < 130 and all(m.answers == [m.sharer_context] for m in repeats)
    for p, m in zip(pt, mt):  # the same worlds, whatever the fraction
        assert p.sharer_context == m.sharer_context and (m.question == REPEAT_QUESTION or m == p)
    assert all(m.question == REPEAT_QUESTION for m in FactTransferData(**kw, repeat_fraction=1.0).split_examples()[0])
    with pytest.raises(DataError, match="repeat_fraction must be"):
        FactTransferData(repeat_fraction=1.5)


@pytest.mark.parametrize("kwargs, needle", [
    ({"attributes": ["color"]}, "Did you mean 'colour'"), ({"attributes": []}, "attributes is empty"),
    ({"attributes": ["city"], "num_paragraphs": 17}, "only 16"), ({"num_train": 0}, "num_train must be"),
    ({"receiver_context": "all"}, "receiver_context must be one of none, half, full"),
    ({"spans": "paragraphs"}, "Did you mean 'paragraph'"), ({"receiver_template": "chatml"}, "receiver_template"),
    ({"max_context_tokens": 0}, "max_context_tokens must be"),
])
def test_fact_transfer_bad_options(kwargs, needle):
    with pytest.raises(DataError, match=re.escape(needle)):
        FactTransferData(**kwargs)


def test_datasets_registered_and_recipe_checked():
    cls, _ = datasets.check({"type": "fact_transfer", "num_train": 10, "receiver_context": "half"}, "data")
    assert cls is FactTransferData
    for name in ("squad_xc", "hotpotqa_xc", "musique_xc"):
        datasets.check({"type": name, "data_root": "x", "val_size": 3}, "data")
    with pytest.raises(RecipeError, match="receiver_context"):
        datasets.check({"type": "fact_transfer", "receiver_context": "all"}, "data")
    datasets.check({"type": "squad_xc", "receiver_context": "full"}, "data")
    with pytest.raises(DataError, match=r"must be one of none, full, got .half. \(squad_xc has no second part"):
        SQuADXCData(receiver_context="half")


def test_nothing_left_explains(rtok, stok):
    data = FactTransferData(num_train=3, num_val=1, max_context_tokens=5)
    with pytest.raises(DataError, match="no training examples remain.*max_context_tokens \\(now 5\\)"):
        data.prepare(rtok, stok)


# -- file datasets ---------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def squad_rows(n_articles: int = 6, per: int = 3) -> list[dict]:
    return [{"id": f"{a}-{q}", "title": f"Article_{a}", "context": f"The cat {a} sat. The dog ran {q}.",
             "question": f"Where did cat {a} sit?", "answers": {"text": ["on the mat", "the mat"]}}
            for a in range(n_articles) for q in range(per)]


def test_squad_xc_article_disjoint_split(tmp_path, rtok, stok):
    write_jsonl(tmp_path / "s.jsonl", squad_rows())
    data = SQuADXCData(file="s.jsonl", data_root=str(tmp_path), val_size=4, seed=2)
    train, val = data.split_examples()
    assert len(val) == 6 and len(train) == 12  # whole articles: 2 x 3 questions
    titles = lambda exs: {data.group_of(e) for e in exs}  # noqa: E731
    assert not titles(train) & titles(val) and not {e.sharer_context for e in train} & {e.sharer_context for e in val}
    feats_train, feats_val = data.prepare(rtok, stok)
    assert [f["id"] for f in feats_val] == [e.id for e in val] and len(feats_train) == 12
    assert SQuADXCData(file="s.jsonl", data_root=str(tmp_path), val_size=4, seed=2).split_examples() == (train, val)


def test_receiver_context_full_puts_the_paragraph_in_the_receiver_prompt(tmp_path, rtok, stok):
    """The own-reading LoRA's data: the same examples and split, the receiver prompt holding the paragraph first, as
    eval-xc's ``full`` system writes it (full_context), the sharer prompt and the answer unchanged."""
    from lcf.data.xc.dataset import full_context

    write_jsonl(tmp_path / "s.jsonl", squad_rows())
    kw = dict(file="s.jsonl", data_root=str(tmp_path), val_size=4, seed=2)
    none, full = SQuADXCData(**kw), SQuADXCData(**kw, receiver_context="full")
    assert full.split_examples() == none.split_examples()
    (f_train, f_val), (n_train, n_val) = full.prepare(rtok, stok), none.prepare(rtok, stok)
    train, val = none.split_examples()
    for got, plain, ex in zip(f_train + f_val, n_train + n_val, train + val):
        want = receiver_features(rtok, ex.question, full_context(ex))
        assert got["receiver_prompt_ids"] == want["receiver_prompt_ids"]
        assert len(got["receiver_prompt_ids"]) > len(plain["receiver_prompt_ids"])
        assert {k: got[k] for k in ("sharer_prompt_ids", "response_ids", "index", "id")} == \
            {k: plain[k] for k in ("sharer_prompt_ids", "response_ids", "index", "id")}
    ex = XCExample(id="1", sharer_context="Ada lives in Oslo.", question="q", answers=["Oslo"], receiver_context="Ada.")
    assert full_context(ex) == "Ada.\n\nAda lives in Oslo."
    half = FactTransferData(num_train=4, num_val=2, num_paragraphs=4, receiver_context="full", seed=1)
    assert half.split_examples() == FactTransferData(num_train=4, num_val=2, num_paragraphs=4, seed=1).split_examples()


def test_squad_xc_shared_data(data_root):
    data = SQuADXCData(data_root=str(data_root), val_size=100)
    train, val = data.split_examples()
    assert len(train) + len(val) == len(data.examples()) and len(val) >= 100
    assert not {data.group_of(e) for e in train} & {data.group_of(e) for e in val}


@pytest.mark.parametrize("row, needle", [
    ({"title": "T", "context": "c", "question": "q", "answers": {"text": []}}, "no gold answers"),
    ({"title": "T", "question": "q", "answers": {"text": ["a"]}}, "missing key 'context'"),
    ({"title": "T", "context": "c", "question": "q", "answers": {"text": [3]}}, "list of strings"),
])
def test_squad_xc_bad_rows(tmp_path, row, needle):
    write_jsonl(tmp_path / "s.jsonl", [squad_rows(1, 1)[0], row])
    with pytest.raises(DataError, match=re.escape(needle)) as err:
        SQuADXCData(file="s.jsonl", data_root=str(tmp_path)).examples()
    assert "s.jsonl line 2" in str(err.value)


def test_missing_file_and_hub_without_datasets(tmp_path, monkeypatch):
    with pytest.raises(DataFileNotFoundError, match="LCF_DATA_ROOT"):
        MuSiQueXCData(data_root=str(tmp_path)).examples()
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="pip install datasets"):
        SQuADXCData(hub_id="rajpurkar/squad").examples()
    with pytest.raises(DataError, match="pip install datasets"):
        HotpotQAXCData(hub_id="hotpotqa/hotpot_qa").examples()


@pytest.mark.parametrize("mode", ["none", "half"])
def test_hotpotqa_xc_one_supporting_paragraph_each(data_root, mode):
    data = HotpotQAXCData(data_root=str(data_root), receiver_context=mode)
    rows = json.loads((data_root / data.file).read_text())
    examples = data.examples()
    assert len(examples) == len(rows)
    for row, ex in zip(rows, examples):
        titles, paragraphs = hotpot_paragraphs(row, "row")
        support = {t for t, _ in row["supporting_facts"]}
        sharer, receiver = data.split_paragraphs(row, "row", ex.id)
        assert not set(sharer) & set(receiver) and sorted(sharer + receiver) == list(range(len(titles)))
        assert len(sharer) - len(receiver) in (0, 1)
        assert len([i for i in sharer if titles[i] in support]) == 1
        assert len([i for i in receiver if titles[i] in support]) == 1
        assert ex.sharer_context == "\n\n".join(paragraphs[i] for i in sharer)  # order preserved
        assert ex.receiver_context == ("\n\n".join(paragraphs[i] for i in receiver) if mode == "half" else "")


def test_hotpotqa_xc_without_distractors_keeps_the_supporting_split(data_root):
    full = HotpotQAXCData(data_root=str(data_root), receiver_context="half")
    bare = HotpotQAXCData(data_root=str(data_root), receiver_context="half", distractors=False)
    rows = json.loads((data_root / full.file).read_text())
    for row, ex in zip(rows, bare.examples()):
        _, paragraphs = hotpot_paragraphs(row, "row")
        (s,), (r,) = bare.split_paragraphs(row, "row", ex.id)
        sharer, receiver = full.split_paragraphs(row, "row", ex.id)
        assert s in sharer and r in receiver  # the same supporting paragraph on each side
        assert (ex.sharer_context, ex.receiver_context) == (paragraphs[s], paragraphs[r])


def test_hotpotqa_xc_hub_schema_and_errors(tmp_path):
    hub_row = {"id": "h1", "question": "Q?", "answer": "A",
               "supporting_facts": {"title": ["a", "b"], "sent_id": [0, 0]},
               "context": {"title": ["a", "b", "c"], "sentences": [["A one."], ["B one."], ["C one."]]}}
    data = HotpotQAXCData(data_root=str(tmp_path))
    ex = data.parse(hub_row, "hub row 0", 0)
    assert ex.id == "h1" and ex.answers == ["A"] and ex.sharer_context.count("\n\n") == 1
    bad_support = {**hub_row, "supporting_facts": [["a", 0], ["zzz", 1]]}
    bad_context = {**hub_row, "context": "not paragraphs"}
    for row, needle in ((bad_support, "['zzz'] not in the context"), (bad_context, "'context' must be a list")):
        (tmp_path / "h.json").write_text(json.dumps([hub_row, row]))
        with pytest.raises(DataError, match=re.escape(needle)) as err:
            HotpotQAXCData(file="h.json", data_root=str(tmp_path)).examples()
        assert "h.json row 1" in str(err.value)


def test_musique_xc_reads_file(data_root, stok):
    data = MuSiQueXCData(data_root=str(data_root))
    examples = data.examples()
    assert len(examples) == 150 and all(e.answers and e.sharer_context.count("\n\n") == 9 for e in examples)
    assert all(not e.receiver_context for e in examples)


def test_musique_xc_too_long_and_bad_rows(tmp_path, rtok, stok):
    rows = [{"question": f"Q{i}?", "answers": ["a"], "ctxs": [{"title": "T", "text": "The cat sat. " * 40}]}
            for i in range(3)]
    write_jsonl(tmp_path / "m.jsonl", rows)
    data = MuSiQueXCData(file="m.jsonl", data_root=str(tmp_path), val_size=1, max_context_tokens=50)
    assert data.examples()[0].sharer_context.startswith("T: The cat sat.")
    with pytest.raises(DataError, match="dropped 3 \\(3 sharer context longer than max_context_tokens\\)"):
        data.prepare(rtok, stok)
    for bad, needle in (({"question": "Q", "answers": ["a"], "ctxs": []}, "'ctxs' must be a non-empty list"),
                        ({"question": "Q", "answers": [], "ctxs": rows[0]["ctxs"]}, "no gold answers")):
        write_jsonl(tmp_path / "b.jsonl", [bad])
        with pytest.raises(DataError, match=re.escape(needle)):
            MuSiQueXCData(file="b.jsonl", data_root=str(tmp_path)).examples()


# -- real tokenizers ----------------------------------------------------------------------------------------
REAL_CONTEXT = ("Zoë Müller moved to Kraków in 1998 — she was 27.\n\nHer locker number is 4172! Ça va? "
                "The café serves crème brûlée.\n\n東京の天気は晴れです。 Tokyo is sunny at 23°C.")


@pytest.mark.real
def test_real_tokenizers_span_ids(real_receiver_tokenizer, real_sharer_tokenizer):
    for tok in (real_receiver_tokenizer, real_sharer_tokenizer):
        counts = {}
        for scheme in ("paragraph", "sentence", "tokens"):
            feats = sharer_features(tok, REAL_CONTEXT, spans=scheme, span_tokens=8)
            counts[scheme] = check_span_ids(tok, REAL_CONTEXT, feats)
            if scheme == "paragraph":
                pieces: dict[int, list[int]] = {}
                for i, s in zip(feats["sharer_prompt_ids"], feats["sharer_span_ids"]):
                    pieces.setdefault(s, []).append(i)
                texts = [tok.decode(pieces[k]).strip() for k in range(3)]
                assert texts == [REAL_CONTEXT[a:b] for a, b in split_spans(REAL_CONTEXT, "paragraph")]
        assert counts["paragraph"] == 3 and counts["sentence"] == 5 and counts["tokens"] > 5


# -- fact_transfer with open values ----------------------------------------------------------------------
def test_fact_transfer_open_values_unseen_in_training():
    from lcf.data.fact_pools import is_val_value

    data = FactTransferData(num_train=400, num_val=100, values="open", phrasing="varied", num_paragraphs=[1, 5],
                            seed=2)
    train, val = data.split_examples()
    train_text = "\n".join(e.sharer_context + "\n" + e.question for e in train).lower()
    for ex in val:
        answer = ex.answers[0]
        # the answer is in the answer paragraph only, and no training context holds it anywhere
        assert answer in ex.sharer_context and answer.lower() not in ex.question.lower()
        assert not re.search(rf"\b{re.escape(answer.lower())}\b", train_text), answer
    asked = {e.question.split()[0] for e in val}
    assert len(asked) >= 3  # several question phrasings
    people = {len(split_spans(e.sharer_context, "paragraph")) for e in train}
    assert people == {1, 2, 3, 4, 5}
    # training answers come from the training part, validation answers from the validation part
    attr_of = {"Which city": "city", "Where does": "city", "What city": "city", "In which": "city"}
    for split, items in (("train", train), ("val", val)):
        for e in items:
            key = " ".join(e.question.split()[:2])
            if key in attr_of:
                assert is_val_value("city", e.answers[0], 2) == (split == "val"), (split, e.answers[0])


def test_fact_transfer_open_values_deterministic_and_checked():
    a = FactTransferData(num_train=30, num_val=10, values="open", num_paragraphs=2, seed=5)
    assert a.examples() == FactTransferData(num_train=30, num_val=10, values="open", num_paragraphs=2, seed=5).examples()
    for ex in a.examples():  # fixed phrasing: one statement form per attribute
        assert len(split_spans(ex.sharer_context, "paragraph")) == 2
    with pytest.raises(DataError, match="unknown attribute 'job' for values=closed"):
        FactTransferData(attributes=["job"])
    with pytest.raises(DataError, match=r"\[lo, hi\]"):
        FactTransferData(num_paragraphs=[3, 2])
    with pytest.raises(DataError, match="values must be one of closed, open"):
        FactTransferData(values="free")
