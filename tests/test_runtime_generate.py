"""Adapter.generation_inputs: the fused prompt as plain ``receiver.generate`` inputs (streamers, sampling,
stopping criteria), checked against Adapter.generate."""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from lcf.export import export
from lcf.models.kv import cache_kwarg
from lcf.runtime import load_adapter
from lcf.training.run import train
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (module fixture)

PROMPTS = ["What is 2 + 3?", "What is 6 + 1?"]


@pytest.fixture(scope="module")
def adapter(tiny_pair, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("gen_inputs")
    run = train(recipe(tiny_pair, out))
    return load_adapter(export(run, out / "adapter"))


class Collect(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.chunks.append("end")


def test_greedy_through_receiver_generate_equals_adapter_generate(adapter):
    model, tok = adapter.receiver.model, adapter.receiver.tokenizer
    for fuse in (True, False):
        inputs = adapter.generation_inputs(PROMPTS, fuse=fuse)
        assert isinstance(inputs[cache_kwarg(model)], DynamicCache)
        assert inputs[cache_kwarg(model)].get_seq_length() == inputs["input_ids"].shape[1] - 1
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        texts = [t.strip() for t in tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
        assert texts == adapter.generate(PROMPTS, max_new_tokens=6, fuse=fuse)
    fused = adapter.generation_inputs(PROMPTS[0])
    plain = adapter.generation_inputs(PROMPTS[0], fuse=False)
    assert torch.equal(fused["input_ids"], plain["input_ids"])
    edited = [not torch.equal(a.keys, b.keys) for a, b in zip(fused[cache_kwarg(model)].layers,
                                                               plain[cache_kwarg(model)].layers)]
    assert any(edited)  # the adapter edited the cache of some layer


def test_streamer_and_stopping_criteria_work_on_the_fused_cache(adapter):
    model, tok = adapter.receiver.model, adapter.receiver.tokenizer
    inputs = adapter.generation_inputs(PROMPTS[0])
    n_prompt = inputs["input_ids"].shape[1]
    streamer = Collect()

    class StopAfter(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= n_prompt + 3, dtype=torch.bool)

    out = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id,
                         streamer=streamer, stopping_criteria=StoppingCriteriaList([StopAfter()]))
    assert out.shape[1] == n_prompt + 3
    assert streamer.chunks[0] == inputs["input_ids"][0].tolist() and streamer.chunks[-1] == "end"
    assert [c[0] for c in streamer.chunks[1:-1]] == out[0, n_prompt:].tolist()
    sampled = model.generate(**adapter.generation_inputs(PROMPTS[0]), max_new_tokens=4, do_sample=True, top_k=5,
                             pad_token_id=tok.pad_token_id)
    assert sampled.shape[1] <= n_prompt + 4


def test_demo_comparison_has_both_controls(adapter, tiny_pair):  # noqa: F811
    from lcf.cli.demo import compare_on_validation, control_note
    from lcf.data.instruct import InstructData

    data = InstructData(files=["data.json"], data_root=str(tiny_pair), val_size=4, max_prompt_tokens=200,
                        max_response_tokens=16)
    _, val = data.prepare(adapter.receiver.tokenizer, adapter.sharer.tokenizer, adapter.aligner)
    scores = compare_on_validation(adapter, val, batch_size=3)
    assert list(scores) == ["receiver alone", "receiver + adapter", "control: zero sharer cache",
                            "control: another example's cache"]
    assert len({s["tokens"] for s in scores.values()}) == 1  # every system scored on the same tokens
    assert len({round(s["loss"], 6) for s in scores.values()}) == 4
    assert "nats" in control_note(scores)
