"""The recipe's ``init:`` section of a per-token map: where its weights start, run by ``lcf train`` before step 0.

    init: {type: ridge, fit: [{type: squad_xc, items: 300}, ...], held: 40}   # fitted from data (closed form)
    init: {from: checkpoints/xc_token}                                       # an earlier run, adapter or file
    init: {from: checkpoints/xc_token, cut_on: [{type: squad_xc, items: 200}]}   # the same, cut to a lower rank

``ridge`` streams the rows of up to ``items`` distinct training contexts of each ``fit`` set (:mod:`lcf.data.xc.mix`),
holds out the first ``held`` contexts to choose the ridge strength among ``lambdas``, and cuts the map to the
translator's rank (:mod:`lcf.token_map.ridge`). The result is stored in the run folder (``init/``) with the
section that made it, so a resumed or repeated run loads it instead of fitting again. ``from`` takes a run folder
(its ``ckpt/last.ckpt``), an exported adapter folder, or a ``.safetensors`` map: a second training stage. A map
of a higher rank than the translator's is cut to it on the codes of ``cut_on``'s contexts (:mod:`lcf.token_map.cut`).
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from lcf.errors import LCFError, RecipeError, suggest
from lcf.runtime.token_kv import LowRank

INIT_FILE = "token_map_init.safetensors"
RIDGE_KEYS = {"type": str, "fit": list, "held": int, "lambdas": list, "chunk": int, "seed": int}
FROM_KEY = "from"
CUT_KEY = "cut_on"


def check_init(spec: Any, path: str = "init") -> None:
    """Validate an ``init:`` section without reading data or models."""
    from lcf.data.xc.mix import check_sets

    if not isinstance(spec, Mapping):
        raise RecipeError(f"{path}: expected {{type: ridge, fit: [...]}} or {{from: RUN_OR_ADAPTER}}, got {spec!r}")
    if FROM_KEY in spec:
        extra = sorted(set(spec) - {FROM_KEY, CUT_KEY})
        if extra or not isinstance(spec[FROM_KEY], str) or not spec[FROM_KEY]:
            raise RecipeError(f"{path}: `from` takes one path (a run folder, an adapter folder or a .safetensors "
                              f"map) and optionally `{CUT_KEY}` (data sets whose contexts cut a map of a higher rank "
                              f"to the translator's); got {dict(spec)!r}")
        if CUT_KEY in spec:
            check_sets(spec[CUT_KEY], f"{path}.{CUT_KEY}")
        return
    if spec.get("type") != "ridge":
        raise RecipeError(f"{path}.type: expected 'ridge' (or give `from: RUN_OR_ADAPTER`), got {spec.get('type')!r}")
    for key, value in spec.items():
        if key not in RIDGE_KEYS:
            raise RecipeError(f"{path}.{key}: unknown key.{suggest(key, RIDGE_KEYS)} Accepted: "
                              f"{', '.join(RIDGE_KEYS)}.")
        if isinstance(value, bool) or not isinstance(value, RIDGE_KEYS[key]):
            raise RecipeError(f"{path}.{key}: expected {RIDGE_KEYS[key].__name__}, got {value!r}")
    if "fit" not in spec:
        raise RecipeError(f"{path}.fit: required: the data sets whose training contexts fit the map, e.g. "
                          f"[{{type: squad_xc, items: 300}}]")
    check_sets(spec["fit"], f"{path}.fit")
    if spec.get("held", 40) < 1:
        raise RecipeError(f"{path}.held: at least one held-out context chooses the ridge strength, got {spec['held']}")
    lambdas = spec.get("lambdas", [1.0])
    if not lambdas or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in lambdas):
        raise RecipeError(f"{path}.lambdas: a non-empty list of ridge strengths > 0, got {lambdas!r}")


def initialise(spec: Mapping[str, Any], translator: Any, rows: Any, out: Path, data_root: str | None,
               identity: Mapping[str, Any]) -> dict[str, Any]:
    """Set ``translator``'s weights as ``spec`` says; returns the init report (stored in summaries and cards)."""
    check_init(spec)
    if FROM_KEY in spec:
        low, report = load_map(Path(spec[FROM_KEY]))
        info: dict[str, Any] = {"from": spec[FROM_KEY], "before": report}
        if low.rank != translator.rank:
            low, info["cut"] = cut_map(spec, low, translator, rows, data_root)
        translator.set_from(low)
        return info
    stored = out / "init" / INIT_FILE
    key = {"init": dict(spec), "translator": translator.init_args, "pair": dict(identity)}
    if stored.is_file():
        low, meta = _read(stored)
        if meta.get("key") == json.loads(json.dumps(key)):
            translator.set_from(low)
            return meta["report"] | {"stored": str(stored), "reused": True}
        print(f"init: {stored} was made by another init section, translator or pair; fitting again",
              file=sys.stderr)
    low, report = fit_ridge(spec, translator, rows, data_root)
    translator.set_from(low)
    stored.parent.mkdir(parents=True, exist_ok=True)
    _write(stored, translator, {"key": key, "report": report})
    return report | {"stored": str(stored)}


def fit_ridge(spec: Mapping[str, Any], translator: Any, rows: Any, data_root: str | None
              ) -> tuple[LowRank, dict[str, Any]]:
    from lcf.data.xc.mix import pick
    from lcf.models.rows import WindowError
    from lcf.token_map.ridge import LAMBDAS, Ridge

    t0 = time.perf_counter()
    seed, held_n = int(spec.get("seed", 0)), int(spec.get("held", 40))
    contexts, used = pick(spec["fit"], "init.fit", data_root, seed, distinct_contexts=True)
    if len(contexts) <= held_n:
        raise RecipeError(f"init: {len(contexts)} fitting contexts, {held_n} of them held out: raise the sets' "
                          f"items or lower init.held")
    skipped: list[str] = []

    def stream(items: list[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, it in enumerate(items):
            try:
                yield rows.features(it)[:2]
            except WindowError:  # a receiver prompt longer than a sliding window: its rows do not exist
                skipped.append(str(it.id))
            if (i + 1) % 100 == 0:
                print(f"init: rows of {i + 1}/{len(items)} contexts, {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)

    held = list(stream(contexts[:held_n]))
    ridge, report = Ridge.fit(stream(contexts[held_n:]), held, spec.get("lambdas", LAMBDAS),
                              int(spec.get("chunk", 4096)), standardize=translator.standardize)
    report |= {"type": "ridge", "fit": used, "fit_contexts": len(contexts) - len(skipped),
               "skipped_too_long": len(skipped), "rank": translator.rank,
               "seconds": round(time.perf_counter() - t0, 1)}
    print(f"init: ridge on {report['tokens']} tokens, lambda {report['lambda']}, held-out R^2 "
          f"{report['r2'][str(report['lambda'])]:.3f}, {report['seconds']:.0f} s", file=sys.stderr, flush=True)
    return ridge.cut(translator.rank, seed=seed), report


def cut_map(spec: Mapping[str, Any], low: LowRank, translator: Any, rows: Any, data_root: str | None
            ) -> tuple[LowRank, dict[str, Any]]:
    """``low`` cut to the translator's rank on the codes of ``cut_on``'s contexts (:mod:`lcf.token_map.cut`)."""
    from lcf.data.xc.mix import pick
    from lcf.token_map.cut import cut

    if CUT_KEY not in spec or low.rank < translator.rank:
        raise RecipeError(f"init.from: the map has rank {low.rank}, the translator {translator.rank}; a map of a "
                          f"higher rank is cut to the translator's on the codes of some contexts: add `{CUT_KEY}: "
                          f"[{{type: squad_xc, items: 200}}]` to init (a lower rank cannot be raised: use its rank)")
    t0 = time.perf_counter()
    contexts, used = pick(spec[CUT_KEY], f"init.{CUT_KEY}", data_root, 0, distinct_contexts=True)
    with torch.no_grad():
        codes = torch.cat([low.encode(rows.features(it)[0]) for it in contexts])
    out, report = cut(low, codes, translator.rank)
    report |= {"contexts": len(contexts), "on": used, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"init: map of rank {low.rank} cut to {translator.rank} on {len(codes)} tokens, keeping "
          f"{report['energy_kept']:.3f} of its output energy", file=sys.stderr, flush=True)
    return out, report


def load_map(path: Path) -> tuple[LowRank, dict[str, Any]]:
    """A map to start from: a run folder (its last checkpoint), an adapter folder, or a .safetensors map."""
    from lcf.runtime.format import CONFIG_NAME, load_weights

    if path.is_file() and path.suffix == ".safetensors":
        low, meta = _read(path)
        return low, meta.get("report", meta)
    if (path / CONFIG_NAME).is_file():
        cfg = json.loads((path / CONFIG_NAME).read_text())
        return LowRank.from_state(load_weights(path), str(path)), cfg.get("training", {})
    last = path / "ckpt" / "last.ckpt"
    if last.is_dir():  # a DeepSpeed ZeRO checkpoint: its shards are gathered by `lcf export`
        raise LCFError(f"init.from: {last} is a DeepSpeed ZeRO checkpoint folder; export the run first (`lcf export "
                       f"{path} OUT --which last`) and give init.from the adapter folder OUT")
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
        low = LowRank.from_state({k[len("translator."):]: v for k, v in state.items()
                                  if k.startswith("translator.")}, str(last))
        summary = path / "summary.json"
        return low, json.loads(summary.read_text()) if summary.is_file() else {}
    raise LCFError(f"init.from: {path} is neither a run folder with ckpt/last.ckpt, an adapter folder nor a "
                   f".safetensors map; train the first stage (`lcf train ...`) or fix the path")


def _write(path: Path, module: torch.nn.Module, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(tmp), metadata={"lcf_init": json.dumps(meta)})
    tmp.replace(path)


def _read(path: Path) -> tuple[LowRank, dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata() or {}
    info = json.loads(meta.get("lcf_init") or "{}") or {"report": json.loads(meta.get("report") or "{}")}
    return LowRank.from_state(tensors, str(path)), info
