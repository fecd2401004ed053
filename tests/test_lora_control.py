"""The LoRA-receiver control: parameter matching, loss identical to the receiver alone at init, training."""
from __future__ import annotations

import json

import pytest
import torch

from lcf.training.lora import LoRAReceiverModule, lora_params_per_rank, matching_rank, train_lora
from lcf.training.settings import TrainerSettings
from tests.conftest import tiny_llama
from tests.test_communicator import make_batch, make_comm
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (fixture)


def test_matching_rank_counts_lora_parameters():
    model = tiny_llama()
    # per rank: q,o 16+16, k,v 16+8, gate,up 16+32, down 32+16 -> per layer 32*2+24*2+48*3 = 256; 2 layers
    assert matching_rank(model, 512 * 3) == 3


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # steps called without a Trainer
def test_fresh_lora_loss_equals_receiver_alone():
    from peft import LoraConfig, get_peft_model

    comm = make_comm().eval()
    batch = make_batch()
    alone = comm(batch, fuse=False)["loss"]
    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    module = LoRAReceiverModule(peft_model.eval(), TrainerSettings())
    with torch.no_grad():
        assert torch.allclose(module._loss(batch), alone, atol=1e-5)


def test_train_lora_on_tiny_pair(tiny_pair, tmp_path):  # noqa: F811
    run = train_lora(recipe(tiny_pair, tmp_path / "runs"), ["trainer.max_steps=2"])
    summary = json.loads((run / "summary.json").read_text())
    assert run.name == "tiny-lora" and (run / "lora" / "adapter_config.json").exists()
    assert summary["steps"] == 2 and summary["rank"] >= 1
    per_rank = lora_params_per_rank(tiny_llama())
    assert summary["rank"] == max(1, round(summary["translator_parameters"] / per_rank))
    assert summary["trainable_parameters"] == summary["rank"] * per_rank
