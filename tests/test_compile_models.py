"""trainer.compile_models: the frozen LLMs' decoder bodies under torch.compile, for the fit only."""
from __future__ import annotations

import pytest
import torch

from lcf.models.kv import decoder
from lcf.training.module import LCFModule
from lcf.training.settings import TrainerSettings
from tests.test_communicator import make_batch, make_comm


def test_compile_models_is_validated_and_undone_after_fit():
    with pytest.raises(ValueError, match="compile_models must be null"):
        TrainerSettings(compile_models="fast")
    comm = make_comm()
    module = LCFModule(comm, TrainerSettings(compile_models="default"))
    module.compile_frozen("default")
    bodies = [decoder(comm.receiver), *(decoder(s) for s in comm.sharers)]
    assert all(b._compiled_call_impl is not None for b in bodies) and len(module._compiled) == len(bodies)
    module.compile_frozen("default")  # twice: nothing compiled twice
    assert len(module._compiled) == len(bodies)
    module.on_fit_end()
    assert all(b._compiled_call_impl is None for b in bodies) and module._compiled == []


@pytest.mark.slow
def test_compiled_frozen_models_give_the_eager_loss_and_gradients():
    comm = make_comm().eval()  # eval: no gate noise, so two passes are comparable
    batch = make_batch()
    eager = comm(batch)["loss"]
    eager.backward()
    want = [p.grad.clone() for p in comm.translators[0].parameters() if p.grad is not None]
    comm.zero_grad()
    module = LCFModule(comm, TrainerSettings(compile_models="default"))
    module.compile_frozen("default")
    try:
        loss = comm(batch)["loss"]
        loss.backward()
    finally:
        module.uncompile_frozen()
    got = [p.grad for p in comm.translators[0].parameters() if p.grad is not None]
    assert torch.allclose(loss, eager, atol=1e-5)
    assert len(got) == len(want) and all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))
