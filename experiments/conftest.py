"""Experiments' tests use the project's test fixtures (run with `python -m pytest experiments/...`)."""
from tests.conftest import real_receiver_tokenizer, real_sharer_tokenizer  # noqa: F401
