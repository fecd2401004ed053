"""`lcf eval-xc --receiver-lora`: the receiver reading the text itself with a LoRA (the format-fair own reading),
scored beside the same system without it, while the message systems run on the receiver as it was loaded."""
from __future__ import annotations

import pytest
import torch

from lcf.cli.commands import _own_reading_lora
from lcf.data.xc.features import XCExample
from lcf.errors import LCFError
from lcf.eval.xc import build_xc_systems
from lcf.runtime.receiver_lora import ReceiverLoRA, attached
from tests.test_token_adapter import CONTEXT, QUESTION, _load, tiny  # noqa: F401  (tiny: the fixture)

ITEM = XCExample(id="1", sharer_context=CONTEXT, question=QUESTION, answers=["Tromso"])


@pytest.fixture
def lora_folder(tiny, tmp_path):  # noqa: F811
    _, model, _ = tiny
    torch.manual_seed(0)
    lora = ReceiverLoRA(model, rank=4)
    with torch.no_grad():
        for pair in lora.layers.values():
            pair.lora_B.weight.normal_(0.0, 1.0)  # a LoRA that changes the receiver's answers
    return lora.save_peft(tmp_path / "lora")


def test_own_reading_systems_get_a_lora_twin(tiny, lora_folder):  # noqa: F811
    adapter = _load(tiny)
    model = adapter.receiver.model
    before = build_xc_systems(adapter, ["full", "lcf-x"])
    plain_answer, message_answer = (s.answer([ITEM], 8)[0] for s in before)
    lora = _own_reading_lora(adapter, str(lora_folder))
    try:
        assert attached(model) is lora and not lora.enabled
        systems = build_xc_systems(adapter, ["receiver", "full", "lcf-x"], receiver_lora=lora)
        assert [s.name for s in systems] == ["receiver alone", "receiver alone (LoRA)", "receiver + full context",
                                             "receiver + full context (LoRA)", "per-token message"]
        plain, tuned, message = systems[2:]
        tuned_answer = tuned.answer([ITEM], 8)[0]
        assert not lora.enabled  # switched off again after its system answered
        lora.enabled = True
        assert adapter.answer([QUESTION], [CONTEXT], max_new_tokens=8) == tuned_answer
        lora.enabled = False
        assert tuned_answer != plain_answer
        assert plain.answer([ITEM], 8)[0] == plain_answer and message.answer([ITEM], 8)[0] == message_answer
        with pytest.raises(LCFError, match="already carries a receiver LoRA"):
            _own_reading_lora(adapter, str(lora_folder))
    finally:
        lora.detach()
    assert attached(model) is None
