"""lm-evaluation-harness-compatible multiple choice (`lcf eval`'s default) and the `lcf` lm-eval model,
on the tiny trained adapter of tests/test_eval_harness.py."""
from __future__ import annotations

import json
import math

import pytest
import torch

from lcf.cli import main
from lcf.cli.choices import MC_FORMAT_CHOICES
from lcf.errors import LCFError
from lcf.eval.harness import evaluate, format_table, resolve_mc_format, write_report
from lcf.eval.scoring import (MC_FORMATS, cloze_predictions, cloze_requests, continuation_ids, move_trailing_space)
from lcf.eval.systems import AdapterSystem, ReceiverAlone, SharerAlone
from lcf.eval.tasks import load_task
from tests.test_eval_harness import ARC_ROWS, adapter, adapter_dir, arc, task_root, write_jsonl  # noqa: F401
from tests.test_train_export import tiny_pair  # noqa: F401  (fixture)

# contexts with a trailing space (moved to the continuation) and continuations that merge with it
CONTEXTS = ["Question: What is 2 + 2?\nAnswer:", "The cat sat on the ", "hello"]
CONTINUATIONS = [[" 4", " 5", " world"], ["mat", "dog."], [" world", "there", " there"]]


def lmeval_direct(model, tokenizer, context: str, continuation: str) -> float:
    """lm-eval's HF loglikelihood written out: one unpadded forward over context + continuation."""
    context, continuation = move_trailing_space(context, continuation)
    whole = tokenizer(context + continuation)["input_ids"]  # the tokenizer's default special tokens
    n = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float()
    logp = torch.log_softmax(logits[n - 1:-1], -1)
    return float(logp[torch.arange(len(whole) - n), torch.tensor(whole[n:])].sum())


def test_score_continuations_is_lmevals_loglikelihood(adapter):
    r_tok, s_tok = adapter.receiver.tokenizer, adapter.sharer.tokenizer
    assert r_tok("hi")["input_ids"][0] != r_tok.bos_token_id and s_tok("hi")["input_ids"][0] == s_tok.bos_token_id
    for system, model, tok in ((ReceiverAlone(adapter), adapter.receiver.model, r_tok),
                               (ReceiverAlone(adapter.receiver), adapter.receiver.model, r_tok),
                               (SharerAlone(adapter), adapter.sharer.model, s_tok)):
        for bs in (1, 2):
            got = system.score_continuations(CONTEXTS, CONTINUATIONS, batch_size=bs)
            want = [[lmeval_direct(model, tok, c, x) for x in xs] for c, xs in zip(CONTEXTS, CONTINUATIONS)]
            assert got == [pytest.approx(w, abs=1e-4) for w in want], system.name
    # the fused system reads the raw context too, and differs from the receiver alone
    fused = AdapterSystem(adapter).score_continuations(CONTEXTS, CONTINUATIONS)
    alone = ReceiverAlone(adapter).score_continuations(CONTEXTS, CONTINUATIONS)
    assert max(abs(a - b) for f, r in zip(fused, alone) for a, b in zip(f, r)) > 1e-5
    assert all(math.isfinite(x) and x < 0 for s in fused for x in s)


def test_lmeval_encoding_rules(adapter):
    assert move_trailing_space("Answer: ", "x") == ("Answer:", " x")
    assert move_trailing_space("Answer:\n \n", " x") == ("Answer:", "\n \n x")
    tok = adapter.receiver.tokenizer
    whole = tok("hello world")["input_ids"]
    assert continuation_ids(tok, "hello", " world") == whole[len(tok("hello")["input_ids"]):]
    with pytest.raises(LCFError, match="non-empty context"):
        continuation_ids(tok, "", " x")
    with pytest.raises(LCFError, match="no tokens of its own"):
        continuation_ids(tok, "hello", "")


def test_cloze_predictions_normalise_by_characters():
    # acc picks the highest log-likelihood; acc_norm divides by len(choice) (no delimiter), first on ties
    assert cloze_predictions([-4.0, -6.0], ["ab", "abcdef"]) == (0, 1)
    assert cloze_predictions([-2.0, -2.0], ["ab", "ab"]) == (0, 0)
    with pytest.raises(LCFError, match="choice is empty"):
        cloze_predictions([-1.0, -2.0], ["", "a"])


def test_cloze_requests_follow_lmevals_task_prompts(tmp_path):
    write_jsonl(tmp_path / "openbookqa/openbookqa-main-validation.jsonl", [
        {"id": "o1", "question_stem": "The sun is ", "answerKey": "B",
         "choices": {"text": ["cold", "hot"], "label": ["A", "B"]}}])
    write_jsonl(tmp_path / "arc/ARC-Easy-validation.jsonl", ARC_ROWS[2:3])
    obqa, arc_ = load_task("openbookqa", data_root=tmp_path), load_task("arc_easy", data_root=tmp_path)
    assert cloze_requests(obqa, obqa.items()) == (["The sun is "], [[" cold", " hot"]])
    assert cloze_requests(arc_, arc_.items()) == (["Question: A dog ran in the what?\nAnswer:"],
                                                  [[" mat", " cat", " park", " world"]])
    assert arc_.items()[0].answer == 2  # answerKey "3" of labels "1".."4"


def test_evaluate_defaults_to_lmeval_format(adapter, arc, tmp_path):
    results = evaluate([ReceiverAlone(adapter), AdapterSystem(adapter, "mismatched")], [arc], progress=False,
                       latency_runs=0, batch_size=2)
    assert results["config"]["mc_format"] == "lmeval"
    contexts, continuations = cloze_requests(arc, arc.items())
    want = ReceiverAlone(adapter).score_continuations(contexts, continuations)
    rows = results["predictions"]["receiver"]["arc_easy"]
    assert [r["scores"] for r in rows] == [pytest.approx(w, abs=1e-6) for w in want]
    for name in ("receiver", "adapter (mismatched)"):
        scores, rows = results["scores"][name]["arc_easy"], results["predictions"][name]["arc_easy"]
        assert scores["acc"] == sum(r["correct"] for r in rows) / len(rows)
        assert scores["acc_norm"] == scores["primary"] == sum(r["correct_norm"] for r in rows) / len(rows)
        for r, item in zip(rows, arc.items()):
            assert (r["pred"], r["pred_norm"]) == cloze_predictions(r["scores"], item.choices)
    assert "arc_easy (acc / acc_norm, n=5)" in format_table(results)
    md = (write_report(results, tmp_path / "r") / "report.md").read_text()
    assert "lm-evaluation-harness" in md and "acc_norm" in md
    chat = evaluate([ReceiverAlone(adapter)], [arc], mc_format="chat", progress=False, latency_runs=0)
    assert "acc_norm" not in chat["scores"]["receiver"]["arc_easy"] and "arc_easy (acc, n=5)" in format_table(chat)


def test_mc_format_flags():
    assert MC_FORMAT_CHOICES == MC_FORMATS
    assert resolve_mc_format(None) == "lmeval" and resolve_mc_format("chat") == "chat"
    assert resolve_mc_format(None, letter_scoring=True) == "letter" == resolve_mc_format("letter", True)
    assert resolve_mc_format(None, generate_letter=True) == "generate-letter"
    with pytest.raises(LCFError, match="conflicts"):
        resolve_mc_format("chat", letter_scoring=True)
    with pytest.raises(LCFError, match="unknown multiple-choice format"):
        resolve_mc_format("mmlu")


def test_cli_format_chat_and_pair_errors(adapter_dir, task_root, tmp_path, capsys):
    out = tmp_path / "chat"
    rc = main(["eval", str(adapter_dir), "--tasks", "arc_easy", "--format", "chat", "--out", str(out), "--data-root",
               str(task_root), "--systems", "receiver", "--latency-runs", "0", "--no-progress"])
    assert rc == 0 and "arc_easy (acc, n=5)" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["config"]["mc_format"] == "chat"
    base = ["eval", "--tasks", "arc_easy", "--out", str(tmp_path / "x"), "--data-root", str(task_root)]
    assert main(base) == 2 and "--pair PAIR" in capsys.readouterr().err
    assert main(base + ["--pair", "gemma3-to-smollm2", "--systems", "adapter"]) == 2
    assert "cannot run with --pair" in capsys.readouterr().err
    assert main(base + [str(adapter_dir), "--format", "chat", "--letter"]) == 2
    assert "conflicts" in capsys.readouterr().err


# -- the `lcf` model inside lm-evaluation-harness ---------------------------------------------------
TASK_YAML = """
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: {kind}
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{target}"
{extra}
"""


@pytest.fixture(scope="module")
def lm_eval_tasks(task_root, tmp_path_factory):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an optional extra: pip install 'lcf[lmeval]'")
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("lmeval_tasks")
    data = task_root / "arc/ARC-Easy-validation.jsonl"
    (folder / "tiny_mc.yaml").write_text(TASK_YAML.format(
        name="tiny_mc", data=data, kind="multiple_choice", target="{{choices.label.index(answerKey)}}",
        extra='doc_to_choice: "{{choices.text}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm'))
    (folder / "tiny_gen.yaml").write_text(TASK_YAML.format(
        name="tiny_gen", data=data, kind="generate_until", target="{{choices.text[choices.label.index(answerKey)]}}",
        extra="generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 3\nmetric_list:\n  - metric: exact_match"))
    return TaskManager(include_path=str(folder))


def run_lm_eval(lm, tasks, manager) -> dict:
    import lm_eval

    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True,
                                   bootstrap_iters=0, batch_size=2)


def sample_lls(out: dict, task: str) -> list[list[float]]:
    return [[float(r[0]) for r in s["filtered_resps"]] for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]


def test_lcf_model_runs_inside_lm_eval(adapter_dir, adapter, arc, tiny_pair, lm_eval_tasks):  # noqa: F811
    from lm_eval.api.registry import get_model

    from lcf.eval.lmeval_model import LCFLM

    assert get_model("lcf") is LCFLM  # registered by importing the module
    contexts, continuations = cloze_requests(arc, arc.items())
    for control in ("none", "mismatched"):
        out = run_lm_eval(LCFLM.create_from_arg_string(f"adapter={adapter_dir},control={control}",
                                                       {"batch_size": 2}), ["tiny_mc"], lm_eval_tasks)
        want = AdapterSystem(adapter, control).score_continuations(contexts, continuations)
        assert sample_lls(out, "tiny_mc") == [pytest.approx(w, abs=1e-5) for w in want], control
    # lm-eval's own HF model on the tiny receiver folder gives the same log-likelihoods as system=receiver
    hf = run_lm_eval(get_model("hf")(pretrained=str(tiny_pair / "receiver"), dtype="float32", device="cpu"),
                     ["tiny_mc"], lm_eval_tasks)
    alone = run_lm_eval(LCFLM(adapter=str(adapter_dir), system="receiver"), ["tiny_mc"], lm_eval_tasks)
    assert sample_lls(alone, "tiny_mc") == [pytest.approx(w, abs=1e-4) for w in sample_lls(hf, "tiny_mc")]
    assert alone["results"]["tiny_mc"]["acc_norm,none"] == hf["results"]["tiny_mc"]["acc_norm,none"]
    # generate_until: greedy, at most max_gen_toks tokens, cut at the stop string
    gen = run_lm_eval(LCFLM(adapter=str(adapter_dir)), ["tiny_gen"], lm_eval_tasks)
    replies = [s["filtered_resps"][0] for s in gen["samples"]["tiny_gen"]]
    want = AdapterSystem(adapter).generate([c for c in contexts], 3, raw=True)
    assert replies == [w.split("\n", 1)[0] for w in want] and all("\n" not in r for r in replies)
    assert 0.0 <= gen["results"]["tiny_gen"]["exact_match,none"] <= 1.0
    with pytest.raises(LCFError, match="control=zero applies to system=adapter"):
        LCFLM(adapter=str(adapter_dir), system="sharer", control="zero")
