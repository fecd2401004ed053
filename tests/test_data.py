"""Instruction data: reading formats, errors, features, collate padding, splits, DataModule, real data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcf.align.templates import format_messages
from lcf.align.tokens import MaximalCoverageAligner
from lcf.data import (
    BATCH_KEYS,
    DataError,
    DataFileNotFoundError,
    InstructData,
    InstructExample,
    build_features,
    collate,
    read_instruct_file,
)
from lcf.errors import LCFError
from lcf.registry import datasets
from tests.tiny_tokenizers import tiny_receiver_tokenizer, tiny_sharer_tokenizer

ALPACA = [
    {"instruction": "What is the answer?", "input": "", "output": "The answer is 4."},
    {"instruction": "Add the numbers.", "input": "12 and 345", "output": "357"},
    {"instruction": "Say hello.", "input": "", "output": "hello world"},
]
GPTEACHER = [{"instruction": "Write a function.", "input": "add(a, b)", "response": "def add(a, b):\n    return a + b"}]
LLAMAFACTORY = [{
    "instruction": "And the dog?", "input": "", "output": "The dog was happy.",
    "history": [["Where did the cat sit?", "The cat sat on the mat."]],
}]


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


def many_rows(n: int) -> list[dict]:
    words = ["cat", "dog", "mat", "park", "hello", "world"]
    return [{"instruction": f"Tell me about the {words[i % 6]} number {i}.", "input": "",
             "output": f"The {words[(i + 1) % 6]} is {i}."} for i in range(n)]


@pytest.fixture(scope="module")
def rtok():
    return tiny_receiver_tokenizer()


@pytest.fixture(scope="module")
def stok():
    return tiny_sharer_tokenizer()


@pytest.fixture(scope="module")
def aligner():
    return MaximalCoverageAligner()


# -- reading -------------------------------------------------------------------------------------
def test_read_formats(tmp_path):
    alpaca = read_instruct_file(write_json(tmp_path / "a.json", ALPACA))
    assert [e.response for e in alpaca] == ["The answer is 4.", "357", "hello world"]
    assert alpaca[1].messages() == [{"role": "user", "content": "Add the numbers.\n\n12 and 345"}]
    assert alpaca[0].messages() == [{"role": "user", "content": "What is the answer?"}]
    assert (alpaca[2].index, alpaca[2].source) == (2, str(tmp_path / "a.json"))

    (g,) = read_instruct_file(write_json(tmp_path / "g.json", GPTEACHER), "gpteacher")
    assert g.response.startswith("def add") and g.input == "add(a, b)"

    (lf,) = read_instruct_file(write_json(tmp_path / "l.json", LLAMAFACTORY), "llamafactory")
    assert lf.history == [("Where did the cat sit?", "The cat sat on the mat.")]
    assert [m["role"] for m in lf.messages()] == ["user", "assistant", "user"]
    assert lf.messages()[1]["content"] == "The cat sat on the mat."


def test_read_jsonl_relative_to_data_root(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ALPACA + GPTEACHER) + "\n\n")
    rows = read_instruct_file("sub/d.jsonl", data_root=tmp_path)
    assert len(rows) == 4 and rows[3].response.startswith("def add") and rows[3].index == 3
    monkeypatch.setenv("LCF_DATA_ROOT", str(tmp_path))
    assert len(read_instruct_file("sub/d.jsonl")) == 4


@pytest.mark.parametrize("row, fmt, needle", [
    ({"instruction": "x", "input": ""}, "auto", "neither 'output'"),
    ({"instruction": "x", "response": "y"}, "alpaca", "missing key 'output'"),
    ({"instruction": 3, "output": "y"}, "auto", "'instruction' must be a string"),
    ({"instruction": "x", "output": "y", "history": [["only one"]]}, "auto", "history[0]"),
    ({"instruction": "x", "output": "y", "history": [["a", "b"]]}, "alpaca", "format 'llamafactory'"),
    ("not an object", "auto", "expected a JSON object"),
])
def test_malformed_row_names_file_and_row(tmp_path, row, fmt, needle):
    path = write_json(tmp_path / "bad.json", [ALPACA[0], row])
    with pytest.raises(DataError) as err:
        read_instruct_file(path, fmt)
    assert str(path) in str(err.value) and "row 1" in str(err.value) and needle in str(err.value)


def test_malformed_jsonl_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ALPACA[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl line 2"):
        read_instruct_file(path)
    path.write_text(json.dumps(ALPACA[0]) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(DataError, match=r"line 2 \(row 1\).*'output'"):
        read_instruct_file(path)


def test_missing_file_says_which_root_and_how_to_set_it(tmp_path):
    with pytest.raises(DataFileNotFoundError) as err:
        read_instruct_file("instruct/nope.json", data_root=tmp_path)
    msg = str(err.value)
    assert "instruct/nope.json" in msg and str(tmp_path) in msg and "LCF_DATA_ROOT" in msg and "data_root" in msg
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, LCFError)


def test_hub_dataset_without_datasets_package(monkeypatch, rtok, stok, aligner):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    data = InstructData(hub_id="tatsu-lab/alpaca")
    with pytest.raises(DataError, match="pip install datasets"):
        data.prepare(rtok, stok, aligner)


def test_exactly_one_source_and_arguments_checked():
    for kwargs in ({}, {"files": ["a.json"], "hub_id": "x/y"}, {"files": []}):
        with pytest.raises(DataError, match="exactly one of"):
            InstructData(**kwargs)
    with pytest.raises(DataError, match="max_prompt_tokens"):
        InstructData(files=["a.json"], max_prompt_tokens=0)
    for bad in (0, 2.5, True):
        with pytest.raises(DataError, match="pad_to_multiple must be an integer >= 1"):
            InstructData(files=["a.json"], pad_to_multiple=bad)


# -- features ------------------------------------------------------------------------------------
def test_features_match_alignment_and_end_with_end_of_turn(rtok, stok, aligner):
    ex = InstructExample("What is the answer?", "", "The answer is 4.", "mem", 0)
    f = build_features(ex, rtok, stok, aligner)
    al = aligner.align_messages(rtok, stok, ex.messages())
    assert f["receiver_prompt_ids"] == al.receiver_ids.tolist()
    assert f["sharer_prompt_ids"] == al.sharer_ids.tolist()
    assert f["align_mask"] == al.mask.tolist() and len(f["align_index"]) == len(f["receiver_prompt_ids"])
    assert rtok.decode(f["receiver_prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert f["response_ids"][-1] == rtok.convert_tokens_to_ids("<|im_end|>")
    assert rtok.decode(f["response_ids"]) == "The answer is 4.<|im_end|>"
    assert (f["source"], f["index"]) == ("mem", 0)
    # plain-template receiver: the response ends with its eos token
    plain = build_features(ex, stok, rtok, aligner)
    assert plain["response_ids"][-1] == stok.eos_token_id


def test_feature_filtering_and_truncation(rtok, stok, aligner):
    ex = InstructExample("Say hello.", "", "hello world, hello there. What is the answer?", "mem", 0)
    n_prompt = len(build_features(ex, rtok, stok, aligner)["receiver_prompt_ids"])
    assert build_features(ex, rtok, stok, aligner, max_prompt_tokens=n_prompt - 1) is None
    assert build_features(ex, rtok, stok, aligner, max_response_tokens=3)["response_ids"].__len__() == 3
    assert build_features(InstructExample("Say hello.", "", "  \n", "mem", 1), rtok, stok, aligner) is None


def test_collate_by_hand():
    feats = [
        {"receiver_prompt_ids": [11, 12, 13], "sharer_prompt_ids": [21, 22],
         "align_index": [0, 1, 0], "align_mask": [False, True, False], "response_ids": [31]},
        {"receiver_prompt_ids": [14, 15], "sharer_prompt_ids": [23, 24, 25, 26],
         "align_index": [2, 3], "align_mask": [True, True], "response_ids": [32, 33, 34]},
    ]
    b = collate(feats, receiver_pad_id=0, sharer_pad_id=9)
    assert tuple(b) == BATCH_KEYS
    assert b["receiver_prompt_ids"].tolist() == [[11, 12, 13], [0, 14, 15]]
    assert b["receiver_prompt_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert b["sharer_prompt_ids"].tolist() == [[9, 9, 21, 22], [23, 24, 25, 26]]
    assert b["sharer_prompt_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert b["align_index"].tolist() == [[0, 3, 0], [0, 2, 3]]  # row 0 shifted by its 2 sharer pads
    assert b["align_mask"].tolist() == [[False, True, False], [False, True, True]]
    assert b["response_ids"].tolist() == [[31, 0, 0], [32, 33, 34]]
    assert b["response_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert b["align_mask"].dtype == torch.bool and all(
        b[k].dtype == torch.long for k in BATCH_KEYS if k != "align_mask")
    assert b["sharer_prompt_ids"][0, 3] == 22  # the aligned position reads the right sharer token
    # pad_to_multiple: every length rounded up (more left padding on prompts, right padding on responses)
    p = collate(feats, receiver_pad_id=0, sharer_pad_id=9, pad_to_multiple=4)
    assert p["receiver_prompt_ids"].tolist() == [[0, 11, 12, 13], [0, 0, 14, 15]]
    assert p["sharer_prompt_ids"].shape == (2, 4) and p["response_mask"].tolist() == [[1, 0, 0, 0], [1, 1, 1, 0]]
    assert p["align_index"].tolist() == [[0, 0, 3, 0], [0, 0, 2, 3]]


def test_collate_real_features_point_at_the_same_sharer_tokens(tmp_path, rtok, stok, aligner):
    examples = read_instruct_file(write_json(tmp_path / "a.json", ALPACA + LLAMAFACTORY))
    feats = [build_features(e, rtok, stok, aligner) for e in examples]
    b = collate(feats, rtok.pad_token_id, stok.pad_token_id)
    for i, f in enumerate(feats):
        r_pad = b["receiver_prompt_ids"].shape[1] - len(f["receiver_prompt_ids"])
        for p, (j, m) in enumerate(zip(f["align_index"], f["align_mask"])):
            assert bool(b["align_mask"][i, r_pad + p]) == m
            if m:
                assert b["sharer_prompt_ids"][i, b["align_index"][i, r_pad + p]] == f["sharer_prompt_ids"][j]
                assert b["sharer_prompt_mask"][i, b["align_index"][i, r_pad + p]] == 1


# -- splits ----------------------------------------------------------------------------------------
def split_ids(train, val):
    return [f["index"] for f in train], [f["index"] for f in val]


def test_split_is_deterministic_and_val_ignores_train_size(tmp_path, rtok, stok, aligner):
    write_json(tmp_path / "m.json", many_rows(30))
    make = lambda **kw: InstructData(files=["m.json"], data_root=str(tmp_path), val_size=5, **kw)  # noqa: E731
    tr_a, va_a = split_ids(*make(seed=1).prepare(rtok, stok, aligner))
    tr_b, va_b = split_ids(*make(seed=1).prepare(rtok, stok, aligner))
    assert (tr_a, va_a) == (tr_b, va_b) and len(va_a) == 5 and len(tr_a) == 25
    assert not set(tr_a) & set(va_a)
    tr_c, va_c = split_ids(*make(seed=1, train_size=7).prepare(rtok, stok, aligner))
    assert va_c == va_a and tr_c == tr_a[:7]
    tr_d, va_d = split_ids(*make(seed=2).prepare(rtok, stok, aligner))
    assert va_d != va_a


def test_registry_builds_instruct_json(tmp_path):
    write_json(tmp_path / "m.json", many_rows(3))
    data = datasets.build({"type": "instruct_json", "files": ["m.json"], "data_root": str(tmp_path), "val_size": 1})
    assert isinstance(data, InstructData) and len(data.read()) == 3


def test_empty_after_filtering_error(tmp_path, rtok, stok, aligner):
    write_json(tmp_path / "m.json", many_rows(6))
    data = InstructData(files=["m.json"], data_root=str(tmp_path), val_size=2, max_prompt_tokens=3)
    with pytest.raises(DataError) as err:
        data.prepare(rtok, stok, aligner)
    msg = str(err.value)
    assert "read 6 rows" in msg and "dropped 6" in msg and "max_prompt_tokens" in msg
    data = InstructData(files=["m.json"], data_root=str(tmp_path), val_size=6)
    with pytest.raises(DataError, match="val_size"):
        data.prepare(rtok, stok, aligner)


def test_filtered_rows_are_replaced(tmp_path, rtok, stok, aligner):
    rows = many_rows(10) + [{"instruction": "x", "input": "", "output": " "}] * 5
    write_json(tmp_path / "m.json", rows)
    train, val = InstructData(files=["m.json"], data_root=str(tmp_path), val_size=3, train_size=7).prepare(
        rtok, stok, aligner)
    assert len(val) == 3 and len(train) == 7 and all(f["index"] < 10 for f in train + val)


# -- DataModule ------------------------------------------------------------------------------------
def test_lcf_data_does_not_import_lightning():
    code = "import sys, lcf.data; assert 'lightning' not in sys.modules, 'lightning imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_datamodule(tmp_path, rtok, stok, aligner):
    from lcf.data.datamodule import InstructDataModule

    write_json(tmp_path / "m.json", many_rows(12))
    data = InstructData(files=["m.json"], data_root=str(tmp_path), val_size=4)

    def first_batches():
        dm = InstructDataModule(data, rtok, stok, aligner, batch_size=3)
        dm.setup("fit")
        assert (len(dm.train_features), len(dm.val_features)) == (8, 4)
        train = list(dm.train_dataloader())
        val = list(dm.val_dataloader())
        assert len(train) == 3 and len(val) == 2 and tuple(train[0]) == BATCH_KEYS
        return train[0]["receiver_prompt_ids"], val[0]["receiver_prompt_ids"]

    a, b = first_batches(), first_batches()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    no_val = InstructDataModule(InstructData(files=["m.json"], data_root=str(tmp_path), val_size=0),
                                rtok, stok, aligner, batch_size=2)
    assert no_val.val_dataloader() == []


# -- real data and tokenizers ---------------------------------------------------------------------
def check_mask_follows_content(feature, example, rtok, stok, aligner):
    """align_mask is True on tokens inside message contents and False on template tokens."""
    al = aligner.align_messages(rtok, stok, example.messages())
    assert feature["receiver_prompt_ids"] == al.receiver_ids.tolist()
    assert feature["sharer_prompt_ids"] == al.sharer_ids.tolist()
    spans = format_messages(rtok, example.messages()).spans
    inside = outside = 0
    for (a, b), m in zip(al.receiver_offsets.tolist(), feature["align_mask"]):
        if b > a and any(s <= a and b <= e for s, e in spans):
            assert m, "content token not aligned"
            inside += 1
        elif not any(a < e and s < b for s, e in spans):
            assert not m, "template token aligned"
            outside += 1
    assert inside > 0 and outside > 0


@pytest.mark.real
@pytest.mark.parametrize("path", ["instruct/alpaca_en_demo_llamafactory.json",
                                  "instruct/gpteacher/codegen-instruct.json"])
def test_real_data_and_tokenizers(path, data_root, real_receiver_tokenizer, real_sharer_tokenizer):
    rtok, stok, aligner = real_receiver_tokenizer, real_sharer_tokenizer, MaximalCoverageAligner()
    data = InstructData(files=[path], data_root=str(data_root), train_size=12, val_size=4)
    train, val = data.prepare(rtok, stok, aligner)
    assert (len(train), len(val)) == (12, 4)
    examples = {e.index: e for e in data.read()}
    im_start, im_end = rtok.convert_tokens_to_ids("<|im_start|>"), rtok.convert_tokens_to_ids("<|im_end|>")
    for f in train[:4] + val[:2]:
        r_text, s_text = rtok.decode(f["receiver_prompt_ids"]), stok.decode(f["sharer_prompt_ids"])
        assert f["receiver_prompt_ids"][0] == im_start and r_text.endswith("<|im_start|>assistant\n")  # chat
        assert s_text.startswith("<bos>### Instruction:\n") and s_text.endswith("### Response:\n")  # plain
        assert len(f["receiver_prompt_ids"]) <= 256 and len(f["sharer_prompt_ids"]) <= 256
        assert len(f["response_ids"]) <= 128
        if len(f["response_ids"]) < 128:
            assert f["response_ids"][-1] == im_end
        check_mask_follows_content(f, examples[f["index"]], rtok, stok, aligner)
    batch = collate(train[:4], rtok.pad_token_id, stok.pad_token_id)
    assert batch["align_index"].max() < batch["sharer_prompt_ids"].shape[1]
