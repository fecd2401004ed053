"""Evaluation tasks and metrics: schemas, real data, sampling, error messages, SQuAD/GSM8K scoring."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from lcf.data.instruct import DataError, DataFileNotFoundError
from lcf.errors import LCFError, RegistryError
from lcf.eval import MCItem, QAItem, Task, load_task
from lcf.eval.metrics import (
    MetricError, accuracy, exact_match, f1, gsm8k_number, normalize_answer, squad_scores,
)
from lcf.registry import tasks

ALL_TASKS = ["arc_challenge", "arc_easy", "gsm8k", "hotpotqa", "mmlu", "mmlu_redux", "openbookqa", "sciq", "squad"]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def arc_row(i: int, labels: list[str], key: str) -> dict:
    return {"id": f"q{i}", "question": f"Question {i}?", "answerKey": key,
            "choices": {"text": [f"opt{j}" for j in range(len(labels))], "label": labels}}


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """A data root with a few rows of every schema."""
    write_jsonl(tmp_path / "arc/ARC-Easy-validation.jsonl",
                [arc_row(0, list("ABCD"), "C"), arc_row(1, list("1234"), "2"), arc_row(2, list("ABCDE"), "E")])
    write_jsonl(tmp_path / "arc/ARC-Challenge-validation.jsonl", [arc_row(0, list("ABC"), "A")])
    obqa = {"id": "7-1", "question_stem": "Gas can fill", "answerKey": "D",
            "choices": {"text": ["a", "b", "c", "d"], "label": list("ABCD")}}
    write_jsonl(tmp_path / "openbookqa/openbookqa-main-validation.jsonl", [obqa])
    mmlu = [{"subject": "algebra", "question": f"2+{i}?", "choices": ["1", "2", "3", "4"], "answer": i % 4}
            for i in range(10)]
    write_jsonl(tmp_path / "mmlu/mmlu_validation.jsonl", mmlu)
    redux = [dict(r, error_type="ok" if i % 3 else "wrong_groundtruth", correct_answer=None)
             for i, r in enumerate(mmlu)]
    write_jsonl(tmp_path / "mmlu_redux/mmlu_redux.jsonl", redux)
    write_jsonl(tmp_path / "squad/squad_v1.1_dev_sample_dev.jsonl", [
        {"id": "s1", "title": "T", "context": "Paris is in France.", "question": "Where is Paris?",
         "answers": {"text": ["France", "France", "in France"], "answer_start_recomputed": [12, 12, 9]}}])
    hotpot = [{"_id": "h1", "question": "Same nationality?", "answer": "yes", "type": "comparison",
               "level": "hard", "supporting_facts": [["A", 0]],
               "context": [["A", ["A is American.", " A is a director."]], ["B", ["B is American."]]]}]
    (tmp_path / "hotpotqa").mkdir()
    (tmp_path / "hotpotqa/hotpot_dev_distractor_v1.first100.json").write_text(json.dumps(hotpot))
    write_jsonl(tmp_path / "gsm8k/test.jsonl", [
        {"question": "How many?", "answer": "16 - 3 = <<16-3=13>>13\n#### 13"},
        {"question": "How much?", "answer": "It costs 1,200 dollars.\n#### 1,200"}])
    return tmp_path


# -- schemas ------------------------------------------------------------------------------------
def test_registry_lists_all_tasks() -> None:
    assert tasks.names() == ALL_TASKS
    for name in ALL_TASKS:
        cls = tasks.get(name)
        assert issubclass(cls, Task) and cls.name == name
        assert cls.kind in ("mc", "qa") and cls.metric in ("accuracy", "em_f1", "exact_match")


def test_arc_numeric_labels_normalised(tiny_root: Path) -> None:
    items = load_task("arc_easy", data_root=str(tiny_root)).items()
    assert [i.labels for i in items] == [list("ABCD"), list("ABCD"), list("ABCDE")]
    assert [i.answer for i in items] == [2, 1, 4]
    item = items[1]
    assert isinstance(item, MCItem) and item.id == "q1" and item.choices == ["opt0", "opt1", "opt2", "opt3"]
    task = load_task("arc_easy", data_root=str(tiny_root))
    assert task.prompt(item) == "Question 1?\nA. opt0\nB. opt1\nC. opt2\nD. opt3\nAnswer:"
    assert task.option_texts(item) == [" opt0", " opt1", " opt2", " opt3"]
    assert task.letter_texts(item) == [" A", " B", " C", " D"]
    assert load_task("arc_challenge", data_root=str(tiny_root)).items()[0].labels == list("ABC")


def test_openbookqa_and_mmlu(tiny_root: Path) -> None:
    (ob,) = load_task("openbookqa", data_root=str(tiny_root)).items()
    assert (ob.question, ob.answer, ob.id) == ("Gas can fill", 3, "7-1")
    mm = load_task("mmlu", data_root=str(tiny_root)).items()
    assert len(mm) == 10 and mm[5].answer == 1 and mm[5].subject == "algebra" and mm[5].id == "mmlu/validation/5"


def test_mmlu_redux_filters_error_type(tiny_root: Path) -> None:
    ok = load_task("mmlu_redux", data_root=str(tiny_root)).items()
    every = load_task("mmlu_redux", data_root=str(tiny_root), all_rows=True).items()
    assert len(ok) == 6 and len(every) == 10
    assert {i.id for i in ok} < {i.id for i in every}  # ids are row positions in the file, filter or not


def test_squad_hotpot_gsm8k(tiny_root: Path) -> None:
    squad = load_task("squad", data_root=str(tiny_root))
    (sq,) = squad.items()
    assert isinstance(sq, QAItem) and sq.answers == ["France", "in France"] and sq.context == "Paris is in France."
    assert squad.prompt(sq) == "Paris is in France.\n\nQuestion: Where is Paris?\nAnswer with a short phrase."
    (hp,) = load_task("hotpotqa", data_root=str(tiny_root)).items()
    assert hp.id == "h1" and hp.answers == ["yes"]
    assert hp.context == "A: A is American. A is a director.\n\nB: B is American."
    gsm = load_task("gsm8k", data_root=str(tiny_root))
    assert [i.answers for i in gsm.items()] == [["13"], ["1200"]]
    assert gsm.items()[0].context == "" and "How many?" in gsm.prompt(gsm.items()[0])


def test_data_root_from_env(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LCF_DATA_ROOT", str(tiny_root))
    assert len(load_task("mmlu").items()) == 10


# -- sampling -----------------------------------------------------------------------------------
def test_sampling_is_deterministic_and_ordered(tiny_root: Path) -> None:
    def ids(**kw: Any) -> list[str]:
        return [i.id for i in load_task("mmlu", data_root=str(tiny_root), **kw).items()]

    every = ids()
    a, b = ids(limit=4, seed=1), ids(limit=4, seed=1)
    assert a == b and len(a) == 4
    assert a == [i for i in every if i in a]  # file order kept
    assert any(ids(limit=4, seed=s) != a for s in range(2, 6))
    assert ids(limit=100) == every


# -- errors -------------------------------------------------------------------------------------
def test_missing_file_names_path_and_root(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError) as exc:
        load_task("arc_easy", data_root=str(tmp_path))
    msg = str(exc.value)
    assert "ARC-Easy-validation.jsonl" in msg and str(tmp_path) in msg and "LCF_DATA_ROOT" in msg
    assert isinstance(exc.value, LCFError)


@pytest.mark.parametrize("limit", [0, -3])
def test_bad_limit(tiny_root: Path, limit: int) -> None:
    with pytest.raises(DataError, match="limit must be >= 1"):
        load_task("mmlu", data_root=str(tiny_root), limit=limit)


def test_unknown_task_suggests() -> None:
    with pytest.raises(RegistryError) as exc:
        load_task("arc_esay")
    msg = str(exc.value)
    assert "Did you mean 'arc_easy'" in msg and all(n in msg for n in ALL_TASKS)
    assert isinstance(exc.value, LCFError)


def test_unknown_split_lists_available(tiny_root: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_task("mmlu", data_root=str(tiny_root), split="valid")
    msg = str(exc.value)
    assert "'valid'" in msg and "Did you mean 'validation'" in msg and "validation, test, dev" in msg


def test_unknown_option(tiny_root: Path) -> None:
    with pytest.raises(DataError, match="Did you mean 'all_rows'"):
        load_task("mmlu_redux", data_root=str(tiny_root), all_row=True)


@pytest.mark.parametrize("task,path,rows,problem", [
    ("arc_easy", "arc/ARC-Easy-validation.jsonl", [arc_row(0, list("ABCD"), "A"), arc_row(1, list("ABCD"), "F")],
     "answer key 'F' is not one of the choice labels"),
    ("arc_easy", "arc/ARC-Easy-validation.jsonl", [arc_row(0, list("ABCD"), "A"), {"id": "x", "question": "q"}],
     "missing key 'choices'"),
    ("mmlu", "mmlu/mmlu_validation.jsonl", [{"subject": "s", "question": "q", "choices": ["a", "b"], "answer": 0},
                                            {"subject": "s", "question": "q", "choices": ["a", "b"], "answer": 7}],
     "answer index 7 out of range"),
    ("mmlu_redux", "mmlu_redux/mmlu_redux.jsonl", [{"subject": "s", "question": "q", "choices": ["a", "b"],
                                                    "answer": 0, "error_type": "ok"},
                                                   {"subject": "s", "question": "q", "choices": ["a", "b"], "answer": 0}],
     "missing key 'error_type'"),
    ("squad", "squad/squad_v1.1_dev_sample_dev.jsonl", [{"id": "a", "context": "c", "question": "q",
                                                         "answers": {"text": ["x"]}},
                                                        {"id": "b", "context": "c", "question": 3,
                                                         "answers": {"text": ["x"]}}],
     "'question' must be str"),
    ("gsm8k", "gsm8k/test.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "q", "answer": "42"}],
     "must end with '#### <number>'"),
])
def test_malformed_row_names_file_and_line(tmp_path: Path, task: str, path: str, rows: list, problem: str) -> None:
    full = write_jsonl(tmp_path / path, rows)
    with pytest.raises(DataError) as exc:
        load_task(task, data_root=str(tmp_path)).items()
    msg = str(exc.value)
    assert f"{full} line 2" in msg and problem in msg


def test_invalid_json_line(tmp_path: Path) -> None:
    p = tmp_path / "gsm8k/test.jsonl"
    write_jsonl(p, [{"question": "q", "answer": "#### 1"}])
    p.write_text(p.read_text() + '{"question": "q", \n')
    with pytest.raises(DataError, match=r"test.jsonl line 2: not valid JSON"):
        load_task("gsm8k", data_root=str(tmp_path)).items()


def test_hotpot_malformed_record(tmp_path: Path) -> None:
    (tmp_path / "hotpotqa").mkdir()
    (tmp_path / "hotpotqa/hotpot_dev_distractor_v1.first100.json").write_text(
        json.dumps([{"_id": "h", "question": "q", "answer": "a", "context": [["T", "not a list"]]}]))
    with pytest.raises(DataError, match=r"first100.json row 0: the sentences of paragraph 'T'"):
        load_task("hotpotqa", data_root=str(tmp_path)).items()


# -- hub datasets -------------------------------------------------------------------------------
def test_hub_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="pip install datasets"):
        load_task("squad", hub_id="rajpurkar/squad").items()


def test_hub_schemas_with_fake_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    data = {
        "allenai/ai2_arc": [arc_row(0, list("1234"), "3")],
        "cais/mmlu": [{"question": "q", "subject": "law", "choices": ["a", "b", "c", "d"], "answer": 2}],
        "hotpotqa/hotpot_qa": [{"id": "h", "question": "q", "answer": "a", "type": "bridge", "level": "easy",
                                "context": {"title": ["A", "B"], "sentences": [["x.", " y."], ["z."]]}}],
        "offline/x": None,
    }

    def load_dataset(hub_id: str, config: str | None = None, split: str = "train") -> list[dict]:
        calls.append((hub_id, config, split))
        if data[hub_id] is None:
            raise ConnectionError("offline")
        return data[hub_id]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    (arc,) = load_task("arc_challenge", hub_id="allenai/ai2_arc").items()
    assert arc.answer == 2 and arc.labels == list("ABCD")
    (mm,) = load_task("mmlu", hub_id="cais/mmlu", split="test").items()
    assert mm.answer == 2 and mm.subject == "law"
    (hp,) = load_task("hotpotqa", hub_id="hotpotqa/hotpot_qa").items()
    assert hp.context == "A: x. y.\n\nB: z." and hp.id == "h"
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "validation"), ("cais/mmlu", "all", "test"),
                     ("hotpotqa/hotpot_qa", "distractor", "validation")]
    with pytest.raises(DataError, match="could not load hub dataset 'offline/x'.*offline"):
        load_task("squad", hub_id="offline/x").items()


# -- real data ----------------------------------------------------------------------------------
REAL_COUNTS = {"arc_easy": 570, "arc_challenge": 299, "openbookqa": 500, "mmlu": 1531, "mmlu_redux": 5330,
               "squad": 758, "hotpotqa": 100, "gsm8k": 1319, "sciq": 11675}


@pytest.mark.parametrize("name", ALL_TASKS)
def test_real_data(data_root: Path, name: str) -> None:
    task = load_task(name, data_root=str(data_root), limit=5)
    items = task.items()
    assert len(items) == 5 and len(task.all_items()) == REAL_COUNTS[name]
    assert len({i.id for i in task.all_items()}) == REAL_COUNTS[name]  # ids are unique
    for item in items:
        text = task.prompt(item)
        assert item.question.strip() and item.question.strip() in text
        if task.kind == "mc":
            assert isinstance(item, MCItem) and 0 <= item.answer < len(item.choices) == len(item.labels)
            assert item.labels == list("ABCDE"[: len(item.choices)]) and text.endswith("Answer:")
            assert len(task.option_texts(item)) == len(task.letter_texts(item)) == len(item.choices)
        else:
            assert isinstance(item, QAItem) and item.answers and all(a.strip() for a in item.answers)
    if name in ("squad", "hotpotqa"):
        assert all(i.context for i in items)
    if name == "gsm8k":
        assert all(i.answers[0].lstrip("-").replace(".", "").isdigit() for i in task.all_items())


def test_real_arc_numeric_labels(data_root: Path) -> None:
    raw = [json.loads(line) for line in (data_root / "arc/ARC-Easy-validation.jsonl").read_text().splitlines() if line.strip()]
    numeric = [r for r in raw if r["choices"]["label"][0] == "1"]
    assert numeric, "expected some rows with labels 1..4"
    by_id = {i.id: i for i in load_task("arc_easy", data_root=str(data_root)).items()}
    for r in numeric:
        item = by_id[r["id"]]
        assert item.labels[0] == "A" and item.answer == int(r["answerKey"]) - 1


def test_real_mmlu_redux_counts(data_root: Path) -> None:
    ok = load_task("mmlu_redux", data_root=str(data_root)).items()
    every = load_task("mmlu_redux", data_root=str(data_root), all_rows=True).items()
    assert (len(ok), len(every)) == (5330, 5700)


def test_real_sampling_deterministic(data_root: Path) -> None:
    a = [i.id for i in load_task("arc_easy", data_root=str(data_root), limit=20, seed=7).items()]
    b = [i.id for i in load_task("arc_easy", data_root=str(data_root), limit=20, seed=7).items()]
    c = [i.id for i in load_task("arc_easy", data_root=str(data_root), limit=20, seed=8).items()]
    assert a == b and a != c


# -- metrics ------------------------------------------------------------------------------------
def test_normalize_em_f1_by_hand() -> None:
    assert normalize_answer("  The  Eiffel-Tower, Paris! ") == "eiffeltower paris"
    assert normalize_answer("An apple a day") == "apple day"
    assert exact_match("the Eiffel Tower.", ["Eiffel Tower", "tower"]) == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    # pred "eiffel tower in paris" (4 tokens) vs gold "eiffel tower" (2): p=2/4, r=1 -> f1=2/3
    assert f1("The Eiffel Tower in Paris", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    assert f1("The Eiffel Tower in Paris", ["London", "tower in paris"]) == pytest.approx(2 * 0.75 / 1.75)
    assert f1("nothing", ["Eiffel Tower"]) == 0.0 and f1("the", ["a"]) == 1.0  # both empty after normalising
    with pytest.raises(MetricError, match="empty list of gold answers"):
        f1("x", [])


def test_squad_scores_agree_with_torchmetrics_and_own() -> None:
    preds = ["Eiffel Tower", "the tower in Paris", "London", "Denver Broncos", "in 1976"]
    golds = [["The Eiffel Tower"], ["Eiffel Tower", "Paris"], ["Paris"], ["Denver Broncos", "Broncos"], ["1976"]]
    scores = squad_scores(preds, golds)
    own_em = sum(exact_match(p, g) for p, g in zip(preds, golds)) / len(preds)
    own_f1 = sum(f1(p, g) for p, g in zip(preds, golds)) / len(preds)
    assert scores["em"] == pytest.approx(own_em, abs=1e-6) and scores["em"] == pytest.approx(0.4)
    assert scores["f1"] == pytest.approx(own_f1, abs=1e-5)
    assert squad_scores(["same", "same"], [["same"], ["other"]])["em"] == pytest.approx(0.5)  # no id merging
    with pytest.raises(MetricError, match="2 predictions but 1"):
        squad_scores(["a", "b"], [["a"]])


def test_gsm8k_number() -> None:
    assert gsm8k_number("She makes 9 * 2 = $18 every day.\n#### 18") == "18"
    assert gsm8k_number("The total is 1,234,567 dollars.") == "1234567"
    assert gsm8k_number("so 16-3-4=9 eggs") == "9"
    assert gsm8k_number("The answer is -5.") == "-5"
    assert gsm8k_number("It costs $12.50 or 18.00") == "18"
    assert gsm8k_number("about 0.250") == "0.25"
    assert gsm8k_number("no numbers here") is None and gsm8k_number("") is None


def test_accuracy() -> None:
    assert accuracy([0, 1, 2, 3], [0, 1, 0, 0]) == 0.5
    with pytest.raises(MetricError):
        accuracy([1], [1, 2])
    with pytest.raises(MetricError):
        accuracy([], [])


def test_import_is_light() -> None:
    code = "import sys, lcf.eval; assert 'lightning' not in sys.modules and 'omegaconf' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
