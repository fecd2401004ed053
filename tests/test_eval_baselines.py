"""Text relay and LoRA-receiver baselines, adapters named by run/recipe, and `lcf eval` with every system."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

from lcf.cli import choices as cli_choices
from lcf.cli import app as cli
from lcf.errors import LCFError
from lcf.eval.baselines import RELAY_FORMAT, LoRAReceiver, TextRelay, find_lora
from lcf.eval.compose import SYSTEM_KINDS, build_systems, resolve_adapter
from lcf.eval.systems import PlainModel, ReceiverAlone
from lcf.training.lora import train_lora
from lcf.training.run import train
from tests.test_eval_harness import adapter, adapter_dir, arc, mc_inputs, task_root  # noqa: F401  (fixtures)
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def lora_run(tiny_pair, tmp_path_factory):  # noqa: F811
    return train_lora(recipe(tiny_pair, tmp_path_factory.mktemp("lora") / "runs"), ["trainer.max_steps=2"])


def flat(scores: list[list[float]]) -> list[float]:
    return [x for s in scores for x in s]


def test_system_choices_of_the_cli_match_the_harness():
    assert cli_choices.SYSTEM_CHOICES == SYSTEM_KINDS


def test_text_relay_feeds_the_sharers_message_to_the_receiver(adapter, arc):  # noqa: F811
    prompts, options = mc_inputs(arc)
    relay = TextRelay(adapter.sharer, adapter.receiver, message_tokens=4, sharer_template="plain")
    messages = relay.messages(prompts)
    assert len(messages) == len(prompts) and all(isinstance(m, str) for m in messages)
    # the message is what the sharer alone answers (same template, same budget)
    writer = PlainModel(adapter.sharer, template="plain")
    assert messages == writer.generate(prompts, 4)
    s_tok = adapter.sharer.tokenizer
    for p, m in zip(prompts, messages):
        written = len(s_tok(m, add_special_tokens=False)["input_ids"])
        assert written <= 4 + 1, (p, m)  # re-tokenising decoded text may merge/split at most a token
    # scores are the receiver's on the relayed prompt, exactly
    scores = relay.score_options(prompts, options, batch_size=2)
    assert relay.last_messages == messages
    relayed = [RELAY_FORMAT.format(message=m, prompt=p) for m, p in zip(messages, prompts)]
    direct = ReceiverAlone(adapter.receiver).score_options(relayed, options)
    assert flat(scores) == pytest.approx(flat(direct), abs=1e-4)
    assert relay.name == "text-4" and relay.kind == "text" and relay.num_parameters == 0
    with pytest.raises(LCFError, match="message_tokens must be an integer >= 1"):
        TextRelay(adapter.sharer, adapter.receiver, message_tokens=0)
    with pytest.raises(LCFError, match="must contain"):
        TextRelay(adapter.sharer, adapter.receiver, relay_format="{prompt}")


def test_lora_receiver_applies_the_trained_lora_to_a_copy(adapter, arc, lora_run):  # noqa: F811
    prompts, options = mc_inputs(arc)
    before = {k: v.clone() for k, v in adapter.receiver.model.state_dict().items()}
    alone = ReceiverAlone(adapter).score_options(prompts, options)
    lora = LoRAReceiver(lora_run, adapter.receiver)
    summary = json.loads((lora_run / "summary.json").read_text())
    assert lora.num_parameters == summary["trainable_parameters"] > 0
    assert lora.size_bytes == 4 * lora.num_parameters  # fp32
    tuned = lora.score_options(prompts, options, batch_size=3)
    assert max(abs(a - b) for s, t in zip(alone, tuned) for a, b in zip(s, t)) > 1e-6  # the LoRA changes scores
    # the shared receiver is untouched (no LoRA layers injected, same weights, same scores)
    assert not any("lora_" in n for n, _ in adapter.receiver.model.named_parameters())
    after = adapter.receiver.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert ReceiverAlone(adapter).score_options(prompts, options) == alone
    # the LoRA's scores equal a merged model's direct log-likelihoods
    merged = PlainModel(lora.lm, template="auto").score_options(prompts, options)
    assert flat(tuned) == pytest.approx(flat(merged), abs=1e-5)


def test_lora_errors(adapter, lora_run, tmp_path):  # noqa: F811
    with pytest.raises(LCFError, match="holds no PEFT LoRA adapter.*lcf train-lora"):
        find_lora(tmp_path)
    other = tmp_path / "other"
    (other / "lora").mkdir(parents=True)
    for f in (lora_run / "lora").iterdir():
        (other / "lora" / f.name).write_bytes(f.read_bytes())
    summary = json.loads((lora_run / "summary.json").read_text()) | {"receiver": "someone-else"}
    (other / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(LCFError, match="trained on receiver 'someone-else'"):
        LoRAReceiver(other, adapter.receiver)


def test_resolve_adapter_from_folder_run_and_recipe(tiny_pair, tmp_path):  # noqa: F811
    rec = recipe(tiny_pair, tmp_path / "runs")
    with pytest.raises(LCFError, match="has not been trained yet.*lcf train"):
        resolve_adapter(rec)
    run = train(rec)
    out = resolve_adapter(rec)  # exported on demand
    assert out == run / "adapter" and (out / "adapter_config.json").is_file()
    stamp = (out / "adapter_config.json").stat().st_mtime
    assert resolve_adapter(run) == out and (out / "adapter_config.json").stat().st_mtime == stamp  # reused
    assert resolve_adapter(out) == out
    later = time.time() + 5  # a newer checkpoint makes the export stale
    os.utime(run / "ckpt" / "last.ckpt", (later, later))
    resolve_adapter(run)
    assert (out / "adapter_config.json").stat().st_mtime > stamp
    with pytest.raises(LCFError, match="neither an adapter folder"):
        resolve_adapter(tmp_path)
    with pytest.raises(LCFError, match="does not exist"):
        resolve_adapter(tmp_path / "missing.yaml")


def test_build_systems_order_and_errors(adapter, lora_run):  # noqa: F811
    systems = build_systems([adapter], ["lcf"], list(SYSTEM_KINDS), text_tokens=[3, 5], lora=[str(lora_run)])
    assert [s.name for s in systems] == ["receiver", "sharer", "text-3", "text-5", "lora receiver", "lcf",
                                         "lcf (zero)", "lcf (mismatched)"]
    with pytest.raises(LCFError, match="needs --lora"):
        build_systems([adapter], ["lcf"], ["lora"])
    with pytest.raises(LCFError, match="unknown systems"):
        build_systems([adapter], ["lcf"], ["telepathy"])


def test_cli_eval_with_every_system(adapter_dir, lora_run, task_root, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "report"
    rc = cli.main(["eval", str(adapter_dir), "--tasks", "arc_easy", "squad", "--limit", "2", "--out", str(out),
                   "--data-root", str(task_root), "--text-tokens", "3", "--lora", str(lora_run), "--latency-runs", "1",
                   "--max-new-tokens", "3", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    for name in ("receiver", "sharer", "text-3", "lora receiver"):
        assert f"| {name} |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["systems"]["text-3"]["latency"]["ttft_ms"] > 0
    rows = results["predictions"]["text-3"]["arc_easy"]
    assert len(rows) == 2 and all(isinstance(r["message"], str) for r in rows)
    assert results["systems"]["lora receiver"]["num_parameters"] > 0

