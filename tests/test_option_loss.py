"""The option loss: every option scored on one fused prompt cache, as lm-eval ranks them, trained by CE."""
from __future__ import annotations

import pytest
import torch

from lcf.data.features import collate
from lcf.errors import LCFError
from lcf.training.lora import LoRAReceiverModule
from lcf.training.loss_terms import OptionCE, ResponseCE, SharerOptionCE
from lcf.training.options import option_loss, option_scores
from lcf.training.settings import TrainerSettings
from tests.conftest import tiny_llama
from tests.test_communicator import make_batch, make_comm
from tests.test_task_data import build, mix_root  # noqa: F401  (fixture)


def with_choices(batch: dict, seed: int = 3) -> dict:
    """Row 0: three options of lengths 3, 1, 2; row 1: two options (the third padded away)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [[3, 1, 2], [2, 3]]
    ids = torch.zeros(2, 3, 3, dtype=torch.long)
    mask = torch.zeros(2, 3, 3, dtype=torch.long)
    for i, row in enumerate(lengths):
        for j, n in enumerate(row):
            ids[i, j, :n] = torch.randint(3, 97, (n,), generator=g)
            mask[i, j, :n] = 1
    valid = torch.tensor([[True, True, True], [True, True, False]])
    return {**batch, "choice_ids": ids, "choice_mask": mask, "choice_valid": valid,
            "choice_gold": torch.tensor([2, 0]), "choice_chars": torch.tensor([[9, 2, 5], [4, 8, 1]])}


def option_as_response(batch: dict, i: int, j: int) -> dict:
    """Row ``i`` alone with option ``j`` as its response."""
    n = int(batch["choice_mask"][i, j].sum())
    one = {k: v[i:i + 1] for k, v in batch.items() if not k.startswith("choice_")}
    return {**one, "response_ids": batch["choice_ids"][i:i + 1, j, :n],
            "response_mask": torch.ones(1, n, dtype=torch.long)}


@pytest.mark.parametrize("fuse", [True, False])
def test_choice_log_likelihoods_equal_each_option_scored_as_the_response(fuse):
    comm = make_comm().eval()
    batch = with_choices(make_batch())
    with torch.no_grad():
        ll = comm(batch, fuse=fuse, choices=True)["choice_ll"]
        assert ll.shape == (2, 3)
        for i, j in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
            ref = comm(option_as_response(batch, i, j), fuse=fuse)["loss_sum"]
            assert torch.allclose(-ll[i, j], ref, atol=1e-4), (i, j)


def test_option_scores_normalise_per_character_and_mask_padding():
    batch = with_choices(make_batch())
    ll = torch.tensor([[-9.0, -1.0, -5.0], [-2.0, -8.0, 100.0]])
    norm = option_scores(ll, batch, "norm")
    assert torch.allclose(norm[0], torch.tensor([-1.0, -0.5, -1.0])) and norm[1, 2] == float("-inf")
    assert option_scores(ll, batch, "sum")[1].argmax() == 0  # the padded option never wins
    loss, acc = option_loss(ll, batch, "norm")
    ref = torch.nn.functional.cross_entropy(norm, batch["choice_gold"])
    assert torch.allclose(loss, ref) and acc == 0.5  # row 0 picks option 1 (gold 2), row 1 picks 0 (gold 0)
    with pytest.raises(LCFError, match="acc_norm"):
        option_scores(ll, batch, "mean")
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        OptionCE(weight=-1.0)
    with pytest.raises(ValueError, match="score must be"):
        OptionCE(score="mean")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # steps called without a Trainer
def test_option_loss_trains_the_translator_and_needs_options():
    from lcf.training.module import LCFModule

    comm = make_comm().train()
    module = LCFModule(comm, TrainerSettings(), [ResponseCE(), OptionCE(weight=1.0)])
    batch = with_choices(make_batch())
    loss = module.training_step(batch, 0)
    plain = comm(batch)["loss"]
    assert loss > plain  # response loss + option cross-entropy
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in comm.translators[0].parameters())
    with pytest.raises(LCFError, match="data.choices: true"):
        module.training_step(make_batch(), 0)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # steps called without a Trainer
def test_lora_choice_log_likelihoods_at_init_equal_the_receiver_alone():
    from peft import LoraConfig, get_peft_model

    comm = make_comm().eval()
    batch = with_choices(make_batch())
    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    module = LoRAReceiverModule(peft_model.eval(), TrainerSettings(), losses=[ResponseCE(), OptionCE(weight=1.0)])
    with torch.no_grad():
        assert torch.allclose(module._choice_ll(batch), comm(batch, fuse=False, choices=True)["choice_ll"], atol=1e-4)
    peft_model.train()
    loss = module._loss(batch)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora" in n)


class CharTokenizer:
    """One token per character (ids 3..), enough to check how options are tokenized and collated."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (ord(c) % 90) for c in text]}


def test_eval_task_choices_become_padded_option_tensors(mix_root, monkeypatch):  # noqa: F811
    import lcf.data.task_data as td

    monkeypatch.setattr(td, "example_features", lambda ex, *a, **k: {
        "source": ex.source, "index": ex.index, "receiver_prompt_ids": [5, 6], "sharer_prompt_ids": [7],
        "align_index": [0, 0], "align_mask": [False, True], "response_ids": [8]})
    data = build(tasks=[{"name": "arc_easy", "split": "train"}, {"name": "sciq"}], format="cloze", choices=True,
                 data_root=str(mix_root), val_size=1, max_response_tokens=4)
    train, _ = data.prepare(CharTokenizer(), CharTokenizer(), None)
    f = next(f for f in train if f["source"] == "sciq:train" and f["index"] == 3)
    assert f["choice_gold"] == 3 and f["choice_chars"] == [1, 1, 1, 6]  # "a", "b", "c", "gold 3"
    assert f["choice_ids"][3] == CharTokenizer()(" gold 3")["input_ids"][:4]  # " " + choice, cut to 4 tokens
    assert f["sharer_choice_ids"] == f["choice_ids"]  # the same texts in the sharer's tokens (here the same tokenizer)
    batch = collate(train[:3], 0, 1)
    k = max(len(x["choice_ids"]) for x in train[:3])
    assert batch["sharer_choice_ids"].shape == batch["choice_ids"].shape
    assert torch.equal(batch["sharer_choice_mask"], batch["choice_mask"])
    assert (batch["sharer_choice_ids"][batch["sharer_choice_mask"] == 0] == 1).all()  # the sharer's pad id
    assert batch["choice_ids"].shape[:2] == (3, k) and batch["choice_valid"].sum() == sum(
        len(x["choice_ids"]) for x in train[:3])
    with pytest.raises(LCFError, match="all multiple-choice"):
        collate([train[0], {k: v for k, v in train[1].items() if not k.startswith("choice_")}], 0, 0)
    with pytest.raises(Exception, match="needs format: cloze"):
        build(task="arc_easy", choices=True)


def with_sharer_choices(batch: dict, seed: int = 4) -> dict:
    """The options of :func:`with_choices` again in sharer tokens (other lengths: 2, 2, 1 and 3, 1)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(2, 3, 3, dtype=torch.long)
    mask = torch.zeros(2, 3, 3, dtype=torch.long)
    for i, row in enumerate([[2, 2, 1], [3, 1]]):
        for j, n in enumerate(row):
            ids[i, j, :n] = torch.randint(3, 131, (n,), generator=g)
            mask[i, j, :n] = 1
    return {**with_choices(batch), "sharer_choice_ids": ids, "sharer_choice_mask": mask}


def test_sharer_choice_log_likelihoods_equal_the_sharer_scoring_each_option_alone():
    from lcf.training.options import sharer_choice_log_likelihoods

    comm = make_comm().eval()
    sharer = comm.sharers[0]
    batch = with_sharer_choices(make_batch())
    ll = sharer_choice_log_likelihoods(sharer, batch)
    assert ll.shape == (2, 3)
    for i, j in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        keep = batch["sharer_prompt_mask"][i].bool()
        n = int(batch["sharer_choice_mask"][i, j].sum())
        prompt, option = batch["sharer_prompt_ids"][i][keep], batch["sharer_choice_ids"][i, j, :n]
        with torch.no_grad():
            logits = sharer(input_ids=torch.cat([prompt, option])[None]).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1:-1].float(), -1)
        ref = logp.gather(-1, option[:, None]).sum()
        assert torch.allclose(ll[i, j], ref, atol=1e-4), (i, j)


def test_sharer_option_loss_is_the_cross_entropy_against_the_sharers_distribution():
    from lcf.training.options import sharer_option_loss

    batch = with_choices(make_batch())
    ll = torch.tensor([[-9.0, -1.0, -5.0], [-2.0, -8.0, 100.0]], requires_grad=True)
    teacher = torch.tensor([[-2.0, -6.0, -5.0], [-2.0, -1.0, -100.0]])
    loss, agree = sharer_option_loss(ll, teacher, batch, "norm")
    s, t = option_scores(ll, batch, "norm"), option_scores(teacher, batch, "norm")
    ref = sum(-(torch.softmax(t[i, :n], -1) * torch.log_softmax(s[i, :n], -1)).sum() for i, n in ((0, 3), (1, 2))) / 2
    assert torch.isfinite(loss) and torch.allclose(loss, ref)
    assert agree == 0.0  # row 0: fused picks 1, sharer 0; row 1: fused 0, sharer 1 (the padded option never counts)
    loss.backward()
    assert torch.isfinite(ll.grad).all() and ll.grad[1, 2] == 0
    same, agree = sharer_option_loss(teacher, teacher, batch, "norm")
    entropy = sum(-(torch.softmax(t[i, :n], -1) * torch.log_softmax(t[i, :n], -1)).sum() for i, n in ((0, 3), (1, 2))) / 2
    assert torch.allclose(same, entropy) and agree == 1.0  # the minimum: the sharer's own entropy
    sharp, _ = sharer_option_loss(ll, teacher, batch, "norm", temperature=0.1)
    ref = sum(-(torch.softmax(t[i, :n] / 0.1, -1) * torch.log_softmax(s[i, :n] / 0.1, -1)).sum()
              for i, n in ((0, 3), (1, 2))) / 2
    assert torch.allclose(sharp, ref)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        SharerOptionCE(weight=-0.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SharerOptionCE(temperature=0.0)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # steps called without a Trainer
def test_sharer_as_teacher_trains_the_translator_and_the_lora_control():
    from peft import LoraConfig, get_peft_model

    from lcf.training.module import LCFModule

    settings, terms = TrainerSettings(), [ResponseCE(), SharerOptionCE(weight=1.0)]
    comm = make_comm().train()
    batch = with_sharer_choices(make_batch())
    loss = LCFModule(comm, settings, terms).training_step(batch, 0)
    assert loss > comm(batch)["loss"]
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in comm.translators[0].parameters())
    assert not any(p.grad is not None for p in comm.sharers[0].parameters())  # the teacher stays frozen
    with pytest.raises(LCFError, match="sharer_choice_ids"):
        LCFModule(comm, settings, terms).training_step(with_choices(make_batch()), 0)
    assert LCFModule(make_comm(n_sharers=2), settings, terms).teacher() is None  # several sharers: no single teacher

    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora = LoRAReceiverModule(peft_model.train(), settings, sharer=comm.sharers[0], losses=terms)
    lora._loss(batch).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora" in n)
    with pytest.raises(LCFError, match="exactly one token-aligned sharer"):
        LoRAReceiverModule(peft_model, settings, losses=terms)._loss(batch)
