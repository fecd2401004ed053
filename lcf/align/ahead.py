"""Read ahead: let each fused receiver position read a later sharer token.

The fused receiver cache holds every prompt position but the last (the last prompt token is run
again with the response, see :meth:`~lcf.communicator.Communicator.fused_prompt_cache`), so with
plain coverage the sharer's last prompt token is never read. That token is where a model has read
the whole prompt and predicts what follows: for lm-eval's cloze prompts (``...\\nAnswer:``), the
sharer's own expectation of the answer. With ``read_ahead = n`` the aligned receiver positions
``p_0 < p_1 < ... < p_m`` (those with ``mask``) read::

    sharer_index'[p_i] = sharer_index[p_{i+n}]    for i + n <= m
    sharer_index'[p_i] = sharer_index[p_i]        for the last n aligned positions

so the last fused position reads the sharer token of the last prompt token. The whole prompt is known
before fusion, so reading a later sharer position leaks nothing the receiver is not given anyway.
Positions without a counterpart stay masked; ``coverage`` keeps describing the position's own token.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from lcf.align.alignment import TokenAlignment


def read_ahead(alignment: TokenAlignment, n: int) -> TokenAlignment:
    """``alignment`` with each aligned position reading the sharer token of the aligned position ``n``
    places later (the last ``n`` aligned positions keep theirs); ``n = 0`` returns it unchanged."""
    if n == 0:
        return alignment
    aligned = torch.nonzero(alignment.mask).flatten()
    index = alignment.sharer_index.clone()
    if len(aligned) > n:
        index[aligned[:-n]] = alignment.sharer_index[aligned[n:]]
    return replace(alignment, sharer_index=index)
