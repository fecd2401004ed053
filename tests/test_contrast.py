"""The contrastive term: another item's sharer cache (as the evaluation's mismatched control builds it)."""
from __future__ import annotations

import pytest
import torch

from lcf.data.features import collate_prompts
from lcf.errors import LCFError
from lcf.eval.controls import control_features
from lcf.training.contrast import contrast_loss, mismatched_batch, option_ce_per_item
from lcf.training.loss_terms import Contrast, OptionCE, ResponseCE
from lcf.training.module import LCFModule
from lcf.training.settings import TrainerSettings
from tests.test_communicator import make_batch, make_comm
from tests.test_option_loss import with_choices

FEATURES = [  # three prompts of different lengths; align_index counts from each sharer prompt's start
    {"receiver_prompt_ids": [5, 6, 7, 8], "sharer_prompt_ids": [2, 11, 12, 13, 14, 15],
     "align_index": [0, 1, 3, 5], "align_mask": [False, True, True, True]},
    {"receiver_prompt_ids": [9, 10], "sharer_prompt_ids": [2, 21, 22],
     "align_index": [1, 2], "align_mask": [True, True]},
    {"receiver_prompt_ids": [3, 4, 5, 6, 7, 8, 9], "sharer_prompt_ids": [2, 31, 32, 33],
     "align_index": [0, 1, 1, 2, 2, 3, 3], "align_mask": [False, True, True, True, True, True, True]},
]


def test_mismatched_batch_is_the_evaluation_control():
    own = collate_prompts([dict(f) for f in FEATURES], 0, 0)
    prompts = [str(f["receiver_prompt_ids"]) for f in FEATURES]
    ref = collate_prompts(control_features("mismatched", [dict(f) for f in FEATURES], prompts), 0, 0)
    got = mismatched_batch(own)
    for key in ("sharer_prompt_ids", "sharer_prompt_mask", "align_index", "align_mask", "receiver_prompt_ids"):
        assert torch.equal(got[key], ref[key]), key
    assert not torch.equal(got["align_index"], own["align_index"])  # item 0 reads item 1's shorter prompt: clipped


def test_mismatched_batch_needs_two_items():
    one = collate_prompts([dict(FEATURES[0])], 0, 0)
    with pytest.raises(LCFError, match="batch_size >= 2"):
        mismatched_batch(one)


def test_contrast_loss_is_a_hinge_on_the_gap():
    batch = with_choices(make_batch())  # gold options: row 0 -> 2, row 1 -> 0
    own = torch.tensor([[-9.0, -4.0, -2.0], [-1.0, -6.0, 0.0]])
    other = torch.tensor([[-2.0, -4.0, -9.0], [-1.0, -6.0, 0.0]])
    gap = option_ce_per_item(other, batch) - option_ce_per_item(own, batch)
    assert gap[0] > 1 and gap[1] == 0  # row 0: the own cache ranks the gold option first; row 1: no difference
    loss, logs = contrast_loss(own, other, batch, margin=0.5)
    assert torch.allclose(loss, torch.tensor(0.25))  # (relu(0.5 - gap0) = 0, relu(0.5 - 0) = 0.5) / 2
    assert logs["contrast_own_better"] == 0.5 and torch.allclose(logs["contrast_gap"], gap.mean())


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # steps called without a Trainer
def test_training_step_adds_the_term_with_translator_gradients():
    torch.manual_seed(0)
    comm = make_comm().train()
    batch = with_choices(make_batch())
    settings = TrainerSettings(max_steps=4)
    term = Contrast(weight=1.0, margin=5.0)
    module = LCFModule(comm, settings, [ResponseCE(), OptionCE(), term])
    contrast, logs = term(module, comm(batch, choices=True), batch)
    assert set(logs) == {"contrast_gap", "contrast_own_better"}
    assert contrast > 0  # a margin of 5 nats is not met by an untrained translator
    contrast.backward()
    grads = [p.grad for p in comm.translators[0].parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    plain = LCFModule(comm, settings, [ResponseCE(), OptionCE()])
    assert module.training_step(batch, 0) > plain.training_step(batch, 0)


def test_contrast_settings_are_validated():
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        Contrast(weight=-1)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        Contrast(margin=-0.1)
    assert Contrast(weight=0.5).needs_choices and not Contrast.in_validation


def test_contrast_needs_one_token_aligned_sharer_at_run_time():
    term = Contrast()
    module = LCFModule(make_comm(n_sharers=2), TrainerSettings(), [ResponseCE(), term])
    with pytest.raises(LCFError, match="exactly one token-aligned sharer"):  # before any second pass
        term(module, {"choice_ll": torch.zeros(2, 3)}, with_choices(make_batch()))


def test_recipes_that_cannot_contrast_are_refused_at_validation():
    from lcf.config import load_recipe, validate_recipe
    from lcf.errors import RecipeError

    def check(path, *overrides):
        return validate_recipe(load_recipe(path, list(overrides)))

    with pytest.raises(RecipeError, match="contrast .* needs exactly one token-aligned sharer, but this recipe has a "
                                          "compressor"):
        check("recipes/crosscontext.yaml", "losses=[{type: response_ce}, {type: contrast, weight: 1}]")
    with pytest.raises(RecipeError, match="trainer.contrast_weight moved: add `losses: "):
        check("recipes/science_mc_options.yaml", "trainer.contrast_weight=1.0")
    terms = "losses=[{type: response_ce}, {type: option_ce}, {type: contrast, weight: 1.0}]"
    contrast = ("recipes/science_mc_options.yaml", terms, "token_alignment.read_ahead=1")
    with pytest.raises(RecipeError, match="batch_size must be >= 2"):
        check(*contrast, "trainer.batch_size=1")
    with pytest.raises(RecipeError, match="data.choices: true"):
        check(*contrast, "data.choices=false")
    assert check(*contrast)["losses"][2] == {"type": "contrast", "weight": 1.0}
