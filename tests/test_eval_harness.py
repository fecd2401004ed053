"""Evaluation harness on a tiny trained + exported adapter: systems, controls, evaluate(), report, CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lcf.cli import main
from lcf.communicator import Communicator
from lcf.data.features import collate, pad_token_id
from lcf.errors import LCFError
from lcf.eval.harness import adapter_labels, evaluate, format_table, parse_splits, parse_task_options, write_report
from lcf.eval.report import PLOTS
from lcf.eval.systems import AdapterSystem, ReceiverAlone, SharerAlone, System, mismatch_partner
from lcf.eval.tasks import load_task
from lcf.export import export
from lcf.runtime import load_adapter
from lcf.training.run import train
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (tiny_pair is a fixture)

ARC_ROWS = [
    {"id": "q0", "question": "What is 2 + 2?", "answerKey": "B",
     "choices": {"text": ["3", "4", "5"], "label": ["A", "B", "C"]}},
    {"id": "q1", "question": "The cat sat on the what?", "answerKey": "A",
     "choices": {"text": ["mat", "dog", "park", "hello"], "label": ["A", "B", "C", "D"]}},
    {"id": "q2", "question": "A dog ran in the what?", "answerKey": "3",
     "choices": {"text": ["mat", "cat", "park", "world"], "label": ["1", "2", "3", "4"]}},
    {"id": "q3", "question": "What is 12 + 345?", "answerKey": "D",
     "choices": {"text": ["12", "345", "2", "357", "4"], "label": ["A", "B", "C", "D", "E"]}},
    {"id": "q4", "question": "hello what?", "answerKey": "A", "choices": {"text": ["world", "there"], "label": ["A", "B"]}},
]
SQUAD_ROWS = [
    {"id": "s0", "context": "The cat sat on the mat.", "question": "Where did the cat sit?",
     "answers": {"text": ["on the mat", "the mat"], "answer_start": [12, 16]}},
    {"id": "s1", "context": "A dog ran in the park.", "question": "Where did the dog run?",
     "answers": {"text": ["in the park"], "answer_start": [10]}},
]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def task_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    write_jsonl(root / "arc/ARC-Easy-validation.jsonl", ARC_ROWS)
    write_jsonl(root / "squad/squad_v1.1_dev_sample_dev.jsonl", SQUAD_ROWS)
    return root


@pytest.fixture(scope="module")
def adapter_dir(tiny_pair, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("eval_adapter")
    return export(train(recipe(tiny_pair, out / "runs")), out / "adapter", which="last")


@pytest.fixture(scope="module")
def adapter(adapter_dir):
    return load_adapter(adapter_dir)


@pytest.fixture(scope="module")
def arc(task_root):
    return load_task("arc_easy", data_root=task_root)


def mc_inputs(task) -> tuple[list[str], list[list[str]]]:
    items = task.items()
    return [task.prompt(it) for it in items], [task.option_texts(it) for it in items]


def all_systems(adapter) -> list[System]:
    return [ReceiverAlone(adapter), SharerAlone(adapter), *(AdapterSystem(adapter, c) for c in ("none", "zero", "mismatched"))]


def direct_scores(model, tokenizer, prompt_text: str, options: list[str], bos: bool = False) -> list[float]:
    """Sum log p(option | prompt) from one unpadded full forward per option."""
    prompt = tokenizer(prompt_text, add_special_tokens=bos)["input_ids"]
    out = []
    for opt in options:
        ids = tokenizer(opt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0].float()
        logp = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
        out.append(float(logp[torch.arange(len(ids)), torch.tensor(ids)].sum()))
    return out


def test_scores_have_the_right_shapes(adapter, arc):
    prompts, options = mc_inputs(arc)
    for system in all_systems(adapter):
        for bs in (1, 3):
            scores = system.score_options(prompts, options, batch_size=bs)
            assert [len(s) for s in scores] == [len(o) for o in options], system.name
            assert all(math.isfinite(x) and x <= 0 for s in scores for x in s)
        answers = system.generate(prompts[:2], max_new_tokens=3, batch_size=2)
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert ReceiverAlone(adapter).num_parameters == 0 and SharerAlone(adapter).num_parameters == 0
    assert AdapterSystem(adapter).num_parameters == adapter.config["num_parameters"] > 0


def test_receiver_and_sharer_alone_match_a_direct_computation(adapter, arc):
    prompts, options = mc_inputs(arc)
    r_tok, s_tok = adapter.receiver.tokenizer, adapter.sharer.tokenizer
    via_comm = ReceiverAlone(adapter).score_options(prompts, options, batch_size=2)
    via_plain = ReceiverAlone(adapter.receiver).score_options(prompts, options, batch_size=4)
    sharer = SharerAlone(adapter).score_options(prompts, options, batch_size=3)
    for i, (p, opts) in enumerate(zip(prompts, options)):
        text = r_tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        want = direct_scores(adapter.receiver.model, r_tok, text, opts)
        assert via_comm[i] == pytest.approx(want, abs=1e-4)
        assert via_plain[i] == pytest.approx(want, abs=1e-4)
        plain = f"### Instruction:\n{p}\n\n### Response:\n"  # Gemma-like sharer: no chat template -> plain
        assert sharer[i] == pytest.approx(direct_scores(adapter.sharer.model, s_tok, plain, opts, bos=True), abs=1e-4)


@pytest.mark.parametrize("control", ["none", "zero"])
def test_shared_prefill_equals_one_communicator_forward_per_row(adapter, arc, control):
    prompts, options = mc_inputs(arc)
    system = AdapterSystem(adapter, control)
    scores = system.score_options(prompts, options, batch_size=2)
    features = system._encode(prompts)
    rows = [features[i] | {"response_ids": system.option_ids(o)} for i, opts in enumerate(options) for o in opts]
    batch = collate(rows, pad_token_id(adapter.receiver.tokenizer), pad_token_id(adapter.sharer.tokenizer))
    with torch.no_grad():
        out = adapter.communicator(batch, sharer_transform=system.sharer_transform)
    assert [x for s in scores for x in s] == pytest.approx((-out["row_loss_sum"]).tolist(), abs=1e-4)


def test_controls_differ_from_the_adapter_and_each_other(adapter, arc):
    prompts, options = mc_inputs(arc)
    flat = {c: torch.tensor([x for s in AdapterSystem(adapter, c).score_options(prompts, options) for x in s])
            for c in ("none", "zero", "mismatched")}
    receiver = torch.tensor([x for s in ReceiverAlone(adapter).score_options(prompts, options) for x in s])
    assert (flat["none"] - receiver).abs().max() > 1e-5  # the adapter does something
    for a, b in (("none", "zero"), ("none", "mismatched"), ("zero", "mismatched")):
        assert (flat[a] - flat[b]).abs().max() > 1e-5, (a, b)


def test_mismatched_never_reads_the_items_own_sharer_cache(adapter, arc, monkeypatch):
    prompts, options = mc_inputs(arc)
    own = AdapterSystem(adapter)._encode(prompts)
    system = AdapterSystem(adapter, "mismatched")
    feats = system._encode(prompts)
    for i, f in enumerate(feats):  # by construction
        j = f["sharer_source"]
        assert j == mismatch_partner(prompts, i) == (i + 1) % len(prompts) and j != i
        assert f["sharer_prompt_ids"] == own[j]["sharer_prompt_ids"] != own[i]["sharer_prompt_ids"]
        assert f["receiver_prompt_ids"] == own[i]["receiver_prompt_ids"] and f["align_mask"] == own[i]["align_mask"]
        assert max(f["align_index"]) < len(f["sharer_prompt_ids"])
    # at run time: every sharer prefill row is the partner's prompt, never the item's own
    seen: list[list[int]] = []
    original = Communicator._prefill

    def spy(self, model, ids, mask):
        if model is adapter.sharer.model:
            seen.extend([row[m.bool()].tolist() for row, m in zip(ids, mask)])
        return original(self, model, ids, mask)

    monkeypatch.setattr(Communicator, "_prefill", spy)
    system.score_options(prompts, options, batch_size=2)
    assert seen == [own[(i + 1) % len(prompts)]["sharer_prompt_ids"] for i in range(len(prompts))]
    # duplicates are skipped; a single distinct prompt has no partner
    assert mismatch_partner(["a", "a", "b"], 0) == 2 and mismatch_partner(["a", "a", "b"], 2) == 0
    with pytest.raises(LCFError, match="at least 2 distinct items"):
        mismatch_partner(["a", "a"], 0)


def test_evaluate_writes_a_deterministic_report(adapter, task_root, tmp_path):
    tasks = [load_task("arc_easy", data_root=task_root), load_task("squad", data_root=task_root)]
    kwargs = dict(mc_format="chat", progress=False, batch_size=2, max_new_tokens=4, latency_runs=1, latency_tokens=2)
    results = evaluate(all_systems(adapter), tasks, **kwargs)
    assert set(results["scores"]) == {"receiver", "sharer", "adapter", "adapter (zero)", "adapter (mismatched)"}
    for name, per_task in results["scores"].items():
        assert 0.0 <= per_task["arc_easy"]["accuracy"] <= 1.0
        assert 0.0 <= per_task["squad"]["em"] <= per_task["squad"]["f1"] <= 1.0
        lat = results["systems"][name].get("latency")
        assert ("mismatched" in name) == (lat is None)
        assert lat is None or (0 < lat["ttft_ms"] and 0 < lat["e2e_ms"])
    assert results["tasks"]["arc_easy"]["n"] == len(ARC_ROWS) and results["tasks"]["squad"]["n"] == len(SQUAD_ROWS)
    gates = results["adapters"]["adapter"]["gates"]
    assert set(gates) == {"0", "1"} and all(0 <= g <= 1 for kv in gates.values() for g in kv)
    out = write_report(results, tmp_path / "report")
    assert {p.name for p in out.iterdir()} == {"results.json", "report.md", *PLOTS}
    assert all((out / p).stat().st_size > 1000 for p in PLOTS)
    md = (out / "report.md").read_text()
    assert format_table(results) in md and "adapter (mismatched)" in md and "arc_easy (acc, n=5)" in md
    assert json.loads((out / "results.json").read_text())["scores"] == results["scores"]
    again = evaluate(all_systems(adapter), tasks, **kwargs)
    assert again["scores"] == results["scores"] and again["predictions"] == results["predictions"]
    letters = evaluate([ReceiverAlone(adapter)], tasks[:1], letter_scoring=True, progress=False, latency_runs=0)
    rows = letters["predictions"]["receiver"]["arc_easy"]
    assert [len(r["scores"]) for r in rows] == [len(r["choices"]["text"]) for r in ARC_ROWS]
    assert rows[0]["scores"] != results["predictions"]["receiver"]["arc_easy"][0]["scores"]
    generated = evaluate([ReceiverAlone(adapter)], tasks[:1], generate_letter=True, progress=False, latency_runs=0)
    rows = generated["predictions"]["receiver"]["arc_easy"]
    assert len(rows) == len(ARC_ROWS) and all(isinstance(r["text"], str) and -1 <= r["pred"] < 5 for r in rows)
    assert generated["scores"]["receiver"]["arc_easy"]["accuracy"] == sum(r["correct"] for r in rows) / len(rows)
    assert "greedy reply" in (write_report(generated, tmp_path / "gen") / "report.md").read_text()
    with pytest.raises(LCFError, match="not both"):
        evaluate([ReceiverAlone(adapter)], tasks[:1], letter_scoring=True, generate_letter=True, progress=False)


def test_letter_of_reads_the_leading_label():
    from lcf.eval.harness import letter_of

    labels = ["A", "B", "C", "D"]
    for reply, want in [("B", 1), (" (C) because", 2), ("D.", 3), ("A) water", 0), ("\nB, since", 1),
                        ("E", -1), ("Answer: B", -1), ("Banana", -1), ("", -1), ("b", -1),
                        ("The correct answer is C. mitochondria", 2), ("the answer is (D)", 3),
                        ("The correct answer is", -1), ("The answer is E", -1)]:
        assert letter_of(reply, labels) == want, reply


def test_cli_eval_runs_and_reports(adapter_dir, task_root, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["eval", str(adapter_dir), "--tasks", "arc_easy", "--limit", "3", "--out", str(out), "--data-root",
               str(task_root), "--systems", "receiver", "adapter", "mismatched", "--latency-runs", "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    label = adapter_labels([str(adapter_dir)])[0]
    assert "| receiver |" in printed and f"| {label} (mismatched) |" in printed
    assert "arc_easy (acc / acc_norm, n=3)" in printed  # lm-eval's format by default
    assert {p.name for p in out.iterdir()} == {"results.json", "report.md", *PLOTS}


def test_cli_eval_errors(adapter_dir, task_root, tmp_path, capsys):
    opts = ["--out", str(tmp_path / "x"), "--data-root", str(task_root)]
    base = ["eval", str(adapter_dir), *opts]
    assert main(base + ["--tasks", "arc_easy", "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
    assert main(base + ["--tasks", "arc_eazy"]) == 2
    assert "arc_eazy" in (err := capsys.readouterr().err) and "Did you mean 'arc_easy'" in err
    other = tmp_path / "other_pair"
    other.mkdir()
    for f in adapter_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["receiver"]["fingerprint"]["config"] = "0000000000000000"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    assert main(["eval", str(adapter_dir), str(other), *opts, "--tasks", "arc_easy", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "must be for the pair of the first one" in err and "fingerprint" in err
    assert not (tmp_path / "x").exists()


def test_split_and_label_helpers():
    assert parse_splits(None, ["a", "b"]) == {"a": None, "b": None}
    assert parse_splits(["test", "a=validation"], ["a", "b"]) == {"a": "validation", "b": "test"}
    with pytest.raises(LCFError, match="not among the tasks"):
        parse_splits(["c=test"], ["a"])
    assert adapter_labels(["runs/x/adapter", "y/adapter", "z/x"]) == ["x", "y", "x-2"]


@pytest.mark.slow
@pytest.mark.real
def test_cli_eval_on_the_real_adapter(tmp_path, data_root, capsys):
    repo = Path(__file__).resolve().parent.parent
    real = repo / "checkpoints" / "quickstart" / "adapter"
    if not (real / "adapter_config.json").is_file():
        pytest.skip(f"no trained real adapter at {real} (run `lcf demo` first)")
    rc = main(["eval", str(real), "--tasks", "arc_easy", "--limit", "4", "--out", str(tmp_path), "--data-root",
               str(data_root), "--latency-runs", "1", "--no-progress"])
    assert rc == 0 and "| quickstart (zero) |" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(0 <= s["arc_easy"]["acc"] <= 1 and 0 <= s["arc_easy"]["acc_norm"] <= 1 for s in results["scores"].values())


def test_parse_task_options():
    opts = parse_task_options(["mmlu_redux.all_rows=true", "arc_easy.hub_id=allenai/ai2_arc", "arc_easy.hub_config=3"],
                              ["mmlu_redux", "arc_easy"])
    assert opts == {"mmlu_redux": {"all_rows": True}, "arc_easy": {"hub_id": "allenai/ai2_arc", "hub_config": "3"}}
    assert parse_task_options(None, ["a"]) == {"a": {}}
    with pytest.raises(LCFError, match="TASK.OPTION=VALUE"):
        parse_task_options(["all_rows=true"], ["mmlu_redux"])
    with pytest.raises(LCFError, match="not among the tasks"):
        parse_task_options(["mmlu.all_rows=true"], ["mmlu_redux"])
    with pytest.raises(LCFError, match="--limit"):
        parse_task_options(["mmlu_redux.limit=3"], ["mmlu_redux"])


def test_size_plot_labels_do_not_collide():
    from lcf.eval.report import _spread_labels

    pts = [(1e5, 27.0), (1.21e7, 27.0), (1.22e7, 27.0), (3e6, 26.7), (4e8, 27.0)]
    ys = _spread_labels(pts, gap=0.3)
    assert ys[0] == 27.0 and ys[4] == 27.0  # far apart on the log axis: untouched
    near = sorted(ys[1:4])
    assert all(b - a >= 0.3 * (1 - 1e-6) for a, b in zip(near, near[1:]))
    assert all(y >= p[1] for y, p in zip(ys, pts))
