"""Translators: small trained modules that turn a sharer's KV cache into edits of a receiver's cache.

Built-in (registered in :data:`lcf.registry.translators` when this package is imported):

    c2c_projector   C2C baseline fuser (arXiv 2510.03215)             :class:`C2CProjector`
    lcf_lowrank     LCF low-rank joint KV translator (arXiv 2605.22863) :class:`LowRankJointKV`
    gated_fusion    linear maps fused by per-head gates (lightest)     :class:`GatedFusion`
    token_map       per-token cross-context map (one code per token)   :class:`lcf.token_map.TokenMap`

Write your own by subclassing :class:`Translator` (or a built-in) and registering it::

    @lcf.registry.translators.register("my_translator")
    class MyTranslator(LowRankJointKV): ...
"""
from lcf.translators.base import LayerGates, PairShapes, Translator, annealed_temperature
from lcf.translators.c2c import C2CProjector
from lcf.translators.gated import GatedFusion
from lcf.translators.lowrank import LowRankJointKV
from lcf.token_map.model import TokenMap  # noqa: E402  (registers token_map)

__all__ = [
    "Translator", "PairShapes", "LayerGates", "annealed_temperature", "C2CProjector", "LowRankJointKV", "GatedFusion", "TokenMap",
]
