"""The papers' setups (recipes/paper/): offline validation, the parameter dry run against the published
figures, the chat_hub dataset (OpenHermes-2.5 layout, hub path with a stand-in `datasets`), and a two-step
smoke run of every paper recipe on tiny models with the same components."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from lcf.cli import main
from lcf.config import load_recipe, validate_recipe
from lcf.data.chat_hub import ChatHubData, parse_conversation
from lcf.data.features import collate
from lcf.data.instruct import InstructExample, build_features
from lcf.data.rows import DataError
from lcf.dry_run import count_recipe, load_figures
from lcf.errors import RecipeError
from lcf.registry import token_aligners
from tests.conftest import tiny_gemma3, tiny_llama
from tests.tiny_tokenizers import tiny_receiver_tokenizer, tiny_sharer_tokenizer

REPO = Path(__file__).resolve().parent.parent
PAPER = sorted((REPO / "recipes" / "paper").glob("*.yaml"))
EXPECTED = {"c2c_qwen": 478_192_120, "lcf128_qwen": 19_429_368, "lcf128_pruned_qwen": 6_245_154}


def sharegpt(question: str, answer: str, system: str | None = None) -> dict:
    turns = ([{"from": "system", "value": system}] if system else []) + [
        {"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"conversations": turns, "source": "test"}


CHATS = [sharegpt(f"What is {a} + {b}?", f"The answer is {a + b}.", "You are a helpful assistant." if a % 2 else None)
         for a in range(1, 7) for b in range(1, 4)]


def test_paper_recipes_exist_and_validate():
    names = {p.stem for p in PAPER}
    for stem in ("c2c_qwen", "lcf128_qwen", "lcf128_pruned_qwen", "lcfx_hotpotqa"):
        assert {stem, f"{stem}_zero2"} <= names
    for path in PAPER:
        data = validate_recipe(load_recipe(path), origin=str(path))
        assert data["name"] == path.stem
        zero2 = path.stem.endswith("_zero2")
        trainer = data["trainer"]
        assert trainer["batch_size"] * trainer["accumulate_grad_batches"] * trainer["devices"] == 256
        strategy = trainer.get("strategy", "auto")
        assert (isinstance(strategy, dict) and strategy["type"] == "deepspeed" and strategy["stage"] == 2) == zero2
    assert main(["validate", *map(str, PAPER)]) == 0


def test_dry_run_counts_match_the_papers(capsys):
    figures = load_figures()
    for path in PAPER:
        count = count_recipe(validate_recipe(load_recipe(path)), str(path), figures)
        assert count.figure is not None, f"{path.name} has no entry in registry/papers/"
        base = path.stem.removesuffix("_zero2")
        if base in EXPECTED:
            assert count.params == EXPECTED[base]
            assert abs(count.difference()) < 0.005  # the papers round to 3 significant digits
    wide = count_recipe(validate_recipe(load_recipe(REPO / "recipes/paper/lcf128_qwen.yaml", ["translator.rank=256"])),
                        "lcf256", figures)
    assert wide.params == 53_480_952 and wide.figure.params == 53.4e6
    assert main(["params", str(REPO / "recipes/paper/c2c_qwen.yaml")]) == 0
    out = capsys.readouterr().out
    assert "478,192,120" in out and "478.00M" in out and "2510.03215" in out


def test_dry_run_counts_the_receiver_lora_apart(tmp_path, capsys):
    """`lcf params` builds the receiver from its card's widths on the meta device and counts the recipe's receiver
    LoRA as the runtime builds it: one (A, B) pair of rank r on every targeted Linear layer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lcf.dry_run import count_receiver_lora, model_config
    from lcf.runtime.receiver_lora import ReceiverLoRA

    recipe = validate_recipe(load_recipe(REPO / "recipes/science_lora_gated.yaml"))
    count = count_recipe(recipe, "science_lora_gated")
    # SmolLM2-135M (hidden 576, 9 query / 3 KV heads of 64, MLP 1536, 30 layers), rank 16 on q, k, v, o, gate, up, down
    assert count.receiver_lora_params == 30 * 16 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536)) == 4_884_480
    assert count.total == count.params + count.receiver_lora_params and count_recipe(
        validate_recipe(load_recipe(REPO / "recipes/science_mc_options.yaml")), "opts").receiver_lora_params == 0
    # a directory's config.json gives the same count as the LoRA the runtime attaches to that model
    cfg = LlamaConfig(vocab_size=64, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    small = dict(recipe, receiver=str(tmp_path / "llama"),
                 receiver_adapter={"type": "lora", "rank": 4, "target_modules": ["q_proj", "down_proj"]})
    built = ReceiverLoRA(LlamaForCausalLM(cfg), rank=4, target_modules=["q_proj", "down_proj"])
    assert count_receiver_lora(small) == built.num_parameters() == 2 * 4 * ((24 + 24) + (40 + 24))
    # every shipped card builds (its model_type is one transformers knows, its widths are complete)
    for name in ("smollm2-135m-instruct", "gemma3-270m", "qwen3-0.6b", "qwen2.5-0.5b-instruct"):
        assert model_config(name, "receiver").num_attention_heads
    assert main(["params", str(REPO / "recipes/science_lora_gated.yaml")]) == 0
    assert "4,884,480" in capsys.readouterr().out


def test_dry_run_names_the_card_widths_it_lacks(tmp_path, monkeypatch):
    """A card without the decoder's widths cannot build the receiver for the LoRA count: the error names the
    fields and where config.json keeps them."""
    from lcf.dry_run import model_config

    (tmp_path / "models").mkdir()
    card = (REPO / "registry/models/smollm2-135m-instruct.yaml").read_text()
    narrow = "\n".join(line for line in card.splitlines() if not line.startswith(("hidden_size", "num_heads")))
    (tmp_path / "models" / "narrow-llama.yaml").write_text(narrow.replace("name: smollm2-135m-instruct",
                                                                          "name: narrow-llama"))
    monkeypatch.setenv("LCF_REGISTRY_PATH", str(tmp_path))
    with pytest.raises(RecipeError, match=r"'narrow-llama' .* lacks hidden_size, num_heads, which the dry run needs "
                                          r".*config.json has them: hidden_size, num_attention_heads"):
        model_config("narrow-llama", "receiver")


def test_card_widths_match_the_prepared_models():
    """The widths the cards record for the dry run are the prepared models' own (where they are prepared)."""
    from lcf import cards
    from lcf.dry_run import CARD_CONFIG
    from lcf.models.loading import is_prepared, prepared_dir

    checked = 0
    for name in cards.model_card_names():
        card = cards.model_card(name)
        if card.source.kind != "pip_gguf" or not is_prepared(card):
            continue
        config = json.loads((prepared_dir(card) / "config.json").read_text())
        for field, key in CARD_CONFIG.items():
            assert getattr(card, field) == config[key], f"{name}: card {field} vs config.json {key}"
        checked += 1
    if not checked:
        pytest.skip("no card's model is prepared (lcf models prepare --all)")

# -- chat_hub ------------------------------------------------------------------------------------
def test_parse_both_layouts_and_skips():
    ex = parse_conversation(sharegpt("Hi?", "Hello.", "Be brief."), "r", 0)
    assert ex.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert ex.response == "Hello."
    openai = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                           {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
                           {"role": "user", "content": "dangling"}]}
    ex = parse_conversation(openai, "r", 1)
    assert ex.response == "d" and [m["content"] for m in ex.messages] == ["a", "b", "c"]
    tool = {"conversations": [{"from": "tool", "value": "x"}]}
    assert parse_conversation(tool, "r", 2) == "a turn with an unknown role"
    assert parse_conversation({"conversations": [{"from": "human", "value": "x"}]}, "r", 3) == "no assistant turn"
    with pytest.raises(DataError, match="messages_key"):
        parse_conversation({"text": "plain"}, "r row 4", 4)
    with pytest.raises(DataError, match="exactly one of"):
        ChatHubData()
    with pytest.raises(DataError, match="max_length must be an integer >= 2"):
        ChatHubData(files=["x.json"], max_length=1)


@pytest.fixture(scope="module")
def toks():
    return tiny_receiver_tokenizer(), tiny_sharer_tokenizer(), token_aligners.build({"type": "maximal_coverage"})


def test_same_features_as_instruct_json(toks, tmp_path):
    r_tok, s_tok, aligner = toks
    row = json.dumps(sharegpt("What is 2 + 3?", "It is 5."))
    (tmp_path / "chat.jsonl").write_text("\n".join([row] * 3))
    data = ChatHubData(files=["chat.jsonl"], data_root=str(tmp_path), val_size=1, max_prompt_tokens=200,
                       max_response_tokens=16)
    train, val = data.prepare(r_tok, s_tok, aligner)
    assert len(train) == 2 and len(val) == 1
    ref = build_features(InstructExample("What is 2 + 3?", "", "It is 5.", "x", 0), r_tok, s_tok, aligner,
                         max_prompt_tokens=200, max_response_tokens=16)
    for key in ("receiver_prompt_ids", "sharer_prompt_ids", "align_index", "align_mask", "response_ids"):
        assert train[0][key] == ref[key]
    # compact features (numpy) collate to the same batch; max_length cuts the response to fit
    compact = ChatHubData(files=["chat.jsonl"], data_root=str(tmp_path), val_size=1, max_prompt_tokens=200,
                          max_response_tokens=16, compact=True)
    train_c, _ = compact.prepare(r_tok, s_tok, aligner)
    plain, packed = collate(train, 0, 0), collate(train_c, 0, 0)
    assert all(torch.equal(plain[k], packed[k]) for k in plain)
    n_prompt = len(ref["receiver_prompt_ids"])
    cut = ChatHubData(files=["chat.jsonl"], data_root=str(tmp_path), val_size=0, max_length=n_prompt + 2,
                      max_prompt_tokens=200)  # the sharer's prompt is longer than the receiver's here
    assert [len(f["response_ids"]) for f in cut.prepare(r_tok, s_tok, aligner)[0]] == [2, 2, 2]
    short = ChatHubData(files=["chat.jsonl"], data_root=str(tmp_path), val_size=0, max_length=n_prompt,
                        max_prompt_tokens=200)  # a prompt of max_length leaves no room for the response
    with pytest.raises(DataError, match="no training examples remain"):
        short.prepare(r_tok, s_tok, aligner)


class FakeStream:
    """A streamed hub split: counts the rows handed out, records the shuffle asked for."""

    def __init__(self, rows, log):
        self.rows, self.log = rows, log

    def shuffle(self, seed, buffer_size=None):
        self.log["shuffle"] = (seed, buffer_size)
        return self

    def __iter__(self):
        for row in self.rows:
            self.log["read"] += 1
            yield row


def test_hub_path_streams_only_what_it_needs(toks, monkeypatch):
    r_tok, s_tok, aligner = toks
    log = {"read": 0}

    def load_dataset(*args, split, streaming):
        log["args"], log["split"], log["streaming"] = args, split, streaming
        return FakeStream([sharegpt("hello world", "hello there.")] * 1000, log)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = ChatHubData(hub_id="teknium/OpenHermes-2.5", train_size=5, val_size=2, max_prompt_tokens=200, seed=3)
    train, val = data.prepare(r_tok, s_tok, aligner)
    assert (len(train), len(val)) == (5, 2) and log["read"] == 8  # the 8th row shows both are full
    assert log["args"] == ("teknium/OpenHermes-2.5",) and log["streaming"] and log["shuffle"] == (3, 10_000)
    assert train[0]["source"].startswith("hub:teknium/OpenHermes-2.5[train] row")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(DataError, match="could not open hub dataset 'teknium/OpenHermes-2.5'.*files"):
        data.prepare(r_tok, s_tok, aligner)


# -- two-step smoke runs -------------------------------------------------------------------------
def hotpot_row(k: int) -> dict:
    titles = ["Cat", "Dog", "Mat", "Park"]
    ctx = [[t, [f"The {t.lower()} sat on the mat."]] for t in titles]
    return {"_id": f"q{k}", "question": f"What is the answer {k}?", "answer": "the mat",
            "context": ctx, "supporting_facts": [["Cat", 0], ["Dog", 0]]}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_tiny")
    r_tok, s_tok = tiny_receiver_tokenizer(), tiny_sharer_tokenizer()
    for name, model, tok in (("receiver", tiny_llama(vocab_size=len(r_tok)), r_tok),
                             ("sharer", tiny_gemma3(vocab_size=len(s_tok)), s_tok)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "chat.jsonl").write_text("\n".join(json.dumps(c) for c in CHATS))
    (root / "hotpot.json").write_text(json.dumps([hotpot_row(k) for k in range(12)]))
    return root


def toy_overrides(recipe: Path, root: Path, out: Path) -> list[str]:
    """The recipe's components at toy shapes: tiny models, local stand-ins for the hub data, CPU, 2 steps."""
    cfg = load_recipe(recipe)
    common = [f"sharer={root / 'sharer'}", f"receiver={root / 'receiver'}", f"output_dir={out}", f"data_root={root}",
              "data.hub_id=null", "data.train_size=8", "data.val_size=2",
              "trainer.max_steps=2", "trainer.batch_size=2", "trainer.accumulate_grad_batches=2",
              "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true", "trainer.model_dtype=null",
              "trainer.strategy=auto", "trainer.val_every_n_steps=4", "trainer.limit_val_batches=1",
              "trainer.checkpoint_every_n_steps=2", "trainer.log_every_n_steps=1", "trainer.progress=none"]
    toy = {"c2c_projector": ["translator.hidden_dim=32"], "lcf_lowrank": ["translator.rank=8"]}[cfg.translator.type]
    if cfg.data.type == "chat_hub":
        data = ["data.files=[chat.jsonl]", "data.max_length=200", "data.max_response_tokens=16"]
    else:
        data = ["data.file=hotpot.json", "data.max_context_tokens=200", "data.max_prompt_tokens=200"]
    return common + toy + data


@pytest.mark.parametrize("recipe", PAPER, ids=[p.stem for p in PAPER])
def test_paper_recipe_trains_two_steps_at_toy_shapes(recipe, tiny_root, tmp_path):
    from lcf.export import export
    from lcf.runtime import load_adapter
    from lcf.training.run import train

    if "strategy" in load_recipe(recipe).trainer:  # the ZeRO-2 variants: DeepSpeed needs CUDA, the rest is the same
        assert load_recipe(recipe).trainer.strategy.type == "deepspeed"
    overrides = toy_overrides(recipe, tiny_root, tmp_path / "runs")
    run = train(recipe, overrides)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["translator"]["type"] == load_recipe(recipe).translator.type
    assert torch.isfinite(torch.tensor(summary["metrics"]["train/loss"]))
    adapter_dir = export(run, tmp_path / "adapter", which="last")
    if "pruned" in recipe.stem:  # the paper's post-training pruning step, on the toy adapter
        from lcf.prune import prune_adapter

        adapter_dir = prune_adapter(adapter_dir, tmp_path / "pruned", keep=1)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert bool(cfg.get("compressor")) == ("lcfx" in recipe.stem)
    if "lcfx" not in recipe.stem:
        assert isinstance(load_adapter(adapter_dir).generate("What is 2 + 3?", max_new_tokens=2), str)
