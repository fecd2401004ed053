"""`lcf prune ADAPTER OUT --keep N | --threshold T`: a smaller adapter with only the most useful layers.

Every fused receiver layer has two learned gates (K and V); a layer's score is its larger gate value
``sigmoid(logit)``. ``--keep N`` keeps the N layers with the highest scores (ties: lower layer first),
``--threshold T`` every layer whose score is at least T. The pruned adapter is an ordinary adapter
folder: its translator arguments carry ``active_layers``, its file holds only the kept layers' tensors,
and the runtime leaves the receiver's cache of every other layer unchanged.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from lcf.errors import LCFError


def layer_scores(translator: Any) -> dict[int, float]:
    """receiver layer -> max(K gate, V gate) as sigmoid(logit), for the layers the translator edits."""
    return {t: max(gk, gv) for t, (gk, gv) in translator.gate_values().items() if t in translator.active_layers}


def choose_layers(scores: dict[int, float], keep: int | None = None, threshold: float | None = None) -> list[int]:
    """The layers to keep: the ``keep`` best by score, or those with score >= ``threshold``."""
    if (keep is None) == (threshold is None):
        raise LCFError("prune: give exactly one of --keep N (the N layers with the highest gates) or "
                       "--threshold T (every layer whose gate value is >= T)")
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= len(scores):
            raise LCFError(f"prune: --keep must be between 1 and the {len(scores)} layers the adapter edits, got {keep!r}")
        ranked = sorted(scores, key=lambda t: (-scores[t], t))
        return sorted(ranked[:keep])
    if not 0.0 <= float(threshold) <= 1.0:
        raise LCFError(f"prune: --threshold is a gate value in [0, 1], got {threshold!r}")
    kept = sorted(t for t, s in scores.items() if s >= threshold)
    if not kept:
        best = max(scores.values())
        raise LCFError(f"prune: no layer has a gate value >= {threshold} (the highest is {best:.4f}); lower "
                       f"--threshold or use --keep N")
    return kept


def prune_adapter(adapter_dir: str | Path, out_dir: str | Path, *, keep: int | None = None,
                  threshold: float | None = None) -> Path:
    """Write the pruned copy of the adapter at ``adapter_dir`` to ``out_dir``; return ``out_dir``."""
    from lcf.export import write_adapter
    from lcf.runtime.adapter import build_compressor, build_translator
    from lcf.runtime.format import load_weights, read_config, split_state

    src = Path(adapter_dir)
    if Path(out_dir).resolve() == src.resolve():
        raise LCFError(f"prune: the output folder {out_dir} is the adapter itself; write the pruned adapter to "
                       f"a new folder (e.g. {src.name}-keep10)")
    cfg = read_config(src)
    tr_state, comp_state = split_state(load_weights(src))
    translator = build_translator(cfg, tr_state)
    compressor = build_compressor(cfg, comp_state)
    scores = layer_scores(translator)
    before = translator.active_layers
    kept = choose_layers(scores, keep, threshold)
    translator.prune(keep=kept)
    new = copy.deepcopy(cfg)
    new["translator"] = {"type": cfg["translator"]["type"], "args": translator.init_args}
    modules = [translator] + ([compressor] if compressor is not None else [])
    lora = cfg.get("receiver_adapter") or {}  # a composed adapter's receiver LoRA is kept whole (copied)
    new["num_parameters"] = sum(m.num_parameters() for m in modules) + lora.get("num_parameters", 0)
    new["size_bytes"] = (sum(sum(t.numel() * t.element_size() for t in m.state_dict().values()) for m in modules)
                         + lora.get("size_bytes", 0))
    new.setdefault("training", {})["pruned"] = {
        "from": src.name, "layers_before": before, "kept": kept, "keep": keep, "threshold": threshold,
        "scores": {str(t): round(s, 6) for t, s in sorted(scores.items())},
        "size_bytes_before": cfg.get("size_bytes"), "pruned": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return write_adapter(out_dir, translator, new, compressor=compressor,
                         receiver_lora=src / Path(lora["folder"]).name if lora else None)
