"""The per-token cross-context map (translator type ``token_map``): one low-rank code per context token.

The sharer reads a context; each receiver token of that context takes the sharer's keys (rotary phase
undone) and values of every layer as one row x; a rank-r map turns it into the receiver's row y, which is
rotated to its position and read by the receiver in place of its own cache of the context::

    code = ((x - x_mean) / x_std) @ down        y = code @ up + y_mean

- :mod:`lcf.token_map.model`   the registered component :class:`TokenMap` (rank, feature standardisation)
- :mod:`lcf.token_map.rows`    the rows of both models for a cross-context item (:class:`TokenRows`)
- :mod:`lcf.token_map.ridge`   the closed-form ridge fit and its rank-r cut (the data-fitted initialisation)
- :mod:`lcf.token_map.init`    the recipe's ``init:`` section (``{type: ridge, ...}`` or ``{from: RUN_OR_ADAPTER}``)
- :mod:`lcf.token_map.data`    cached training rows and a resumable loader (Lightning DataModule)
- :mod:`lcf.token_map.losses`  its loss components: ``answer_ce`` and ``rows_mse`` (the recipe's ``losses:``)
- :mod:`lcf.token_map.module`  the LightningModule: the weighted sum of those terms
- :mod:`lcf.token_map.train`   ``lcf train`` for this method (init stage, then the Lightning trainer)

The runtime side (send, receive, messages) lives in :mod:`lcf.runtime.token_kv` and
:mod:`lcf.runtime.token_adapter` and needs none of these modules.
"""
from lcf.token_map.model import TokenMap, row_width

__all__ = ["TokenMap", "row_width"]
