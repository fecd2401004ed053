"""The pytest configuration turns warnings raised from lcf modules into errors (pyproject filterwarnings),
and the deprecated `past_key_values` keyword wherever it is passed from."""
from __future__ import annotations

import pytest


def test_a_warning_from_an_lcf_module_fails_the_test():
    with pytest.raises(UserWarning):
        exec("import warnings; warnings.warn('lcf must not warn')", {"__name__": "lcf.some_module"})


def test_passing_past_key_values_fails_the_test():
    message = "`past_key_values` is deprecated and will be removed in version 5.40.0 for `forward`. Use `cache` instead."
    with pytest.raises(FutureWarning):
        exec(f"import warnings; warnings.warn({message!r}, FutureWarning)", {"__name__": "torch.nn.modules.module"})
