"""Experiments' tests use the project's test fixtures (run with `python -m pytest experiments/...`)."""
from tests.conftest import (data_root, real_receiver, real_receiver_tokenizer, real_sharer,  # noqa: F401
                            real_sharer_tokenizer)
