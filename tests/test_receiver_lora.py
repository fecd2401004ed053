"""A receiver LoRA composed with a translator: PEFT's format without PEFT, joint and staged training, export,
runtime loading, and the evaluation's systems (receiver alone without it, the LoRA alone, the controls with it)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from lcf.config import load_recipe, validate_recipe
from lcf.errors import LCFError, RecipeError
from lcf.export import export
from lcf.runtime import AdapterError, load_adapter
from lcf.runtime.receiver_lora import (ReceiverLoRA, attached, find_peft_folder, strip_receiver_lora,
                                       without_receiver_lora)
from lcf.training.run import train
from tests.conftest import tiny_llama
from tests.test_train_export import recipe, tiny_pair  # noqa: F401  (module fixture)

GATED = "type: gated_fusion"
JOINT = "receiver_adapter: {type: lora, rank: 2, alpha: 3, target_modules: [q_proj, v_proj, down_proj]}\n"


def _peft_model(base, **kw):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=3, lora_alpha=5, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False,
                        **kw)
    return get_peft_model(copy.deepcopy(base), config)


def test_runtime_lora_equals_peft_both_ways(tmp_path):
    """Read a PEFT folder without PEFT: the hooked receiver's logits are PeftModel's; the folder lcf writes loads in
    PEFT with the same logits; switched off (or stripped from a copy), the receiver is itself again."""
    from peft import PeftModel

    base = tiny_llama()
    peft = _peft_model(base)
    peft.save_pretrained(tmp_path / "peft")
    model = copy.deepcopy(base)
    lora = ReceiverLoRA.from_peft(find_peft_folder(tmp_path / "peft"), model).attach(model)
    ids = torch.randint(3, 90, (2, 7))
    with torch.no_grad():
        ours, theirs, plain = model(ids).logits, peft(input_ids=ids).logits, base(ids).logits
        assert (ours - plain).abs().max() > 1e-3 and torch.allclose(ours, theirs, atol=1e-6)
        with without_receiver_lora(model):
            assert torch.equal(model(ids).logits, plain)
        lora.save_peft(tmp_path / "ours", base_model="tiny")
        again = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours"))
        assert torch.allclose(again(input_ids=ids).logits, ours, atol=1e-6)
        twin = copy.deepcopy(model)
        assert attached(twin) is not None and attached(strip_receiver_lora(twin)) is None
        assert torch.equal(twin(ids).logits, plain)
    assert lora.num_parameters() == sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n)
    with pytest.raises(LCFError, match="already carries a receiver LoRA"):
        ReceiverLoRA.from_peft(tmp_path / "peft", model).attach(model)
    lora.detach()
    assert attached(model) is None


@pytest.mark.parametrize("option", [{"use_dora": True}, {"use_rslora": True}])
def test_peft_options_lcf_does_not_implement_are_refused(tmp_path, option):
    _peft_model(tiny_llama(), **option).save_pretrained(tmp_path / "peft")
    with pytest.raises(AdapterError, match=f"{next(iter(option))}=True is not supported"):
        ReceiverLoRA.from_peft(tmp_path / "peft", tiny_llama())


@pytest.fixture(scope="module")
def composed(tiny_pair, tmp_path_factory):  # noqa: F811
    """LoRA + gated fusion trained together (4 steps, the last one checkpointed) and exported:
    (run folder, adapter folder, the communicator as training left it)."""
    import lcf.training.run as run_module

    tmp, seen = tmp_path_factory.mktemp("composed"), []

    class Capturing(run_module.LCFModule):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "LCFModule", Capturing)
        run = train(recipe(tiny_pair, tmp / "runs", GATED, extra=JOINT))
    return run, export(run, tmp / "adapter", which="last"), seen[0].communicator.eval()


def _response_batch(adapter, prompt: str = "What is 2 + 3?") -> dict:
    batch = adapter.encode([prompt])
    return batch | {"response_ids": torch.tensor([[5, 6, 7, 8]]), "response_mask": torch.ones(1, 4, dtype=torch.long)}


def test_joint_train_export_load_equals_training_and_peft(composed):
    """The exported folder loads with load_adapter and gives the training-time fused output; its receiver_lora/
    alone loads in PEFT and gives the receiver's output with the LoRA on (the LoRA alone)."""
    from peft import PeftModel

    run, out, trained = composed
    lora = trained.receiver_adapter
    assert all(not torch.equal(m.lora_B.weight, torch.zeros_like(m.lora_B.weight)) for m in lora.layers.values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["receiver_adapter"]["num_parameters"] == lora.num_parameters()
    assert sorted(p.name for p in (out / "receiver_lora").iterdir()) == ["adapter_config.json",
                                                                        "adapter_model.safetensors"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["receiver_adapter"] == {"type": "lora", "folder": "receiver_lora",
                                       "num_parameters": lora.num_parameters(), "size_bytes": lora.size_bytes(),
                                       "args": {"rank": 2, "alpha": 3.0, "lr_scale": 1.0,
                                                "target_modules": ["q_proj", "v_proj", "down_proj"]}}
    assert cfg["num_parameters"] == summary["num_parameters"]
    card = (out / "README.md").read_text()
    assert "| receiver LoRA | rank 2, alpha 3.0" in card and "| init |" not in card
    # the translator's row counts the translator only; the LoRA has its row, the total both
    translator = sum(p.numel() for p in trained.translator.parameters())
    assert cfg["num_parameters"] == translator + lora.num_parameters()
    assert f"), {translator:,} parameters; layer map" in card and f"; {lora.num_parameters():,} parameters (" in card
    adapter = load_adapter(out)
    assert attached(adapter.receiver.model) is adapter.communicator.receiver_adapter
    batch = _response_batch(adapter)
    with torch.no_grad():
        assert torch.allclose(adapter.communicator(batch)["loss"], trained(batch)["loss"], atol=1e-5)
        alone = adapter.communicator(batch, fuse=False)["loss"]
        with without_receiver_lora(adapter.receiver.model):
            assert not torch.allclose(adapter.communicator(batch, fuse=False)["loss"], alone)
        ids = batch["receiver_prompt_ids"]
        fresh = strip_receiver_lora(load_adapter(out).receiver.model)  # the receiver's weights, no LoRA
        peft = PeftModel.from_pretrained(fresh, str(out / "receiver_lora"))
        assert torch.allclose(peft(input_ids=ids).logits, adapter.receiver.model(ids).logits, atol=1e-5)
        assert torch.allclose(adapter.receiver.model(ids).logits, trained.receiver(ids).logits, atol=1e-5)
    inputs = adapter.generation_inputs("What is 2 + 3?")  # the user's own generate() runs with the LoRA on
    assert adapter.receiver.model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] >= 2
    with pytest.raises(LCFError, match="already carries a receiver LoRA"):
        load_adapter(out, receiver=adapter.receiver)


def test_eval_systems_of_a_composed_adapter(composed, tmp_path):
    """The receiver alone and the text relay run without the LoRA, the LoRA alone and the controls with it; the
    pruned adapter keeps it."""
    from lcf.eval.compose import build_systems
    from lcf.prune import prune_adapter

    adapter = load_adapter(composed[1])
    chosen = ["receiver", "text", "lora_alone", "adapter", "zero", "mismatched"]
    systems = build_systems([adapter], ["lcf"], chosen, text_tokens=[2])
    assert [s.name for s in systems] == ["receiver", "text-2", "lcf (LoRA alone)", "lcf", "lcf (zero)",
                                         "lcf (mismatched)"]
    prompts, options = ["What is 2 + 3?", "What is 4 + 1?"], [["5", "6"], ["5", "7"]]
    on = {s.name: s.score_options(prompts, options) for s in systems if s.kind != "text"}
    with adapter.communicator.receiver_adapter.disabled():
        off = {s.name: s.score_options(prompts, options) for s in systems if s.kind != "text"}
    assert on["receiver"] == off["receiver"] == off["lcf (LoRA alone)"] != on["lcf (LoRA alone)"]
    assert on["lcf (zero)"] != off["lcf (zero)"] and on["lcf (mismatched)"] != off["lcf (mismatched)"]
    assert adapter.communicator.receiver_adapter.enabled
    assert systems[2].num_parameters == adapter.communicator.receiver_adapter.num_parameters()
    pruned = prune_adapter(composed[1], tmp_path / "pruned", keep=1)
    assert json.loads((pruned / "adapter_config.json").read_text())["receiver_adapter"]["folder"] == "receiver_lora"
    assert (pruned / "receiver_lora" / "adapter_model.safetensors").read_bytes() == \
        (composed[1] / "receiver_lora" / "adapter_model.safetensors").read_bytes()
    load_adapter(pruned)


def test_staged_lora_from_train_lora_stays_frozen(tiny_pair, tmp_path):  # noqa: F811
    """Staged: `lcf train-lora` trains the LoRA alone (its shape taken from the recipe's receiver_adapter), then the
    translator trains on top of it with lr_scale 0: the exported LoRA is the first stage's, tensor for tensor."""
    from safetensors.torch import load_file

    from lcf.training.lora import train_lora

    path = recipe(tiny_pair, tmp_path / "runs", GATED, extra=JOINT)
    first = train_lora(path, ["trainer.max_steps=2"])
    assert json.loads((first / "summary.json").read_text())["rank"] == 2
    staged = ["trainer.max_steps=2", "receiver_adapter.lr_scale=0.0", f"init.receiver_adapter={first}", "name=staged"]
    run = train(path, staged)
    out = export(run, tmp_path / "adapter", which="last")
    before, after = load_file(first / "lora" / "adapter_model.safetensors"), \
        load_file(out / "receiver_lora" / "adapter_model.safetensors")
    assert sorted(before) == sorted(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / "adapter_config.json").read_text())["training"]["init"] == {"receiver_adapter": str(first)}
    with pytest.raises(RecipeError, match="holds a LoRA of rank 2"):
        train(path, staged[:-1] + ["name=staged2", "receiver_adapter.rank=3"])


@pytest.mark.parametrize("override, message", [
    ("receiver_adapter.rnak=4", "receiver_adapter.rnak: ReceiverLoRA has no argument 'rnak'. Did you mean 'rank'? "
                                "Accepted: rank, alpha, target_modules, lr_scale."),
    ("receiver_adapter.rank=0", "receiver_adapter.rank: the LoRA's rank must be an integer >= 1"),
    ("receiver_adapter.type=dora", "receiver_adapter.type: unknown receiver adapter 'dora'"),
    ("receiver_adapter.lr_scale=0.0", "0 freezes the LoRA, which then stays at its initialisation"),
    ("init.receiver_adapter=x", None),
    ("init.from=x", "a fused translator (gated_fusion) takes only `init: {receiver_adapter: RUN_OR_ADAPTER}`"),
    ("compressor.type=span_pool", "not supported with a compressor"),
])
def test_receiver_adapter_sections_are_validated(tiny_pair, tmp_path, override, message):  # noqa: F811
    cfg = load_recipe(recipe(tiny_pair, tmp_path, GATED, extra=JOINT), [override])
    if message is None:
        assert validate_recipe(cfg)["init"] == {"receiver_adapter": "x"}
        return
    with pytest.raises(RecipeError) as err:
        validate_recipe(cfg)
    assert message in str(err.value)


def test_init_without_a_receiver_adapter_section_is_refused(tiny_pair, tmp_path):  # noqa: F811
    cfg = load_recipe(recipe(tiny_pair, tmp_path, GATED, extra="init: {receiver_adapter: x}\n"))
    with pytest.raises(RecipeError, match="no `receiver_adapter:` section to start from"):
        validate_recipe(cfg)


def test_receiver_lora_composes_with_several_sharers(tiny_pair, tmp_path):  # noqa: F811
    from tests.test_several_sharers import several_recipe

    run = train(several_recipe(tiny_pair, tmp_path / "runs", extra=JOINT), ["trainer.max_steps=2"])
    out = export(run, tmp_path / "adapter", which="last")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert len(cfg["sharers"]) == 2 and cfg["receiver_adapter"]["folder"] == "receiver_lora"
    adapter = load_adapter(out)
    assert len(adapter.more_sharers) == 1 and attached(adapter.receiver.model) is not None
    assert isinstance(adapter.generate("What is 2 + 3?", max_new_tokens=2), str)
