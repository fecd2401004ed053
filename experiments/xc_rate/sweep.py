"""Rate against accuracy of per-token messages: ranks x precisions from one trained map, on the same items.

    python experiments/xc_rate/sweep.py ADAPTER --out DIR [--ranks 64 128 256 512] [--quantize none int8 int4]
        [--data type=squad_xc val_size=400 max_context_tokens=4096] [--only RESULTS_JSON] [--limit N]
        [--cut-on type=squad_xc file=squad/squad_v1.1_train.jsonl items=200]

The adapter's map (rank R) is cut to each rank k on the codes of ``--cut-on``'s training contexts
(:func:`lcf.token_map.cut.cut_factors`: the rank-k map closest to it on those codes, no retraining). A cut
map's codes are a linear function of the rank-R codes (``code_k = code_R @ to_code``), so each item's context is
read by the sharer once; its rank-k message is serialised at each precision, parsed back and read by the
receiver (``TokenAdapter.receive``, the runtime path), greedy, first line, SQuAD EM / F1 and contains, as
``lcf eval-xc`` scores them. Writes ``results.json`` (per-item predictions, systems named ``rank k <precision>``:
``python -m lcf.eval.paired`` reads it), ``report.md`` (bytes per context token against accuracy) and
``rate.png`` when matplotlib is installed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lcf.data.xc.mix import pick
from lcf.eval.harness import first_line
from lcf.eval.metrics import squad_scores
from lcf.eval.xc import contains_rate, held_out_items
from lcf.export import export_token_map
from lcf.runtime import load_adapter
from lcf.runtime.token_kv import LowRank, TokenMessage
from lcf.token_map.cut import cut_factors


def dotlist(values: list[str] | None) -> dict | None:
    return OmegaConf.to_container(OmegaConf.from_dotlist(values)) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ranks", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--quantize", nargs="+", default=["none", "int8", "int4"])
    ap.add_argument("--data", nargs="+", default=["type=squad_xc", "val_size=400", "max_context_tokens=4096"])
    ap.add_argument("--only", nargs="+", default=[])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--cut-on", nargs="+", default=["type=squad_xc", "file=squad/squad_v1.1_train.jsonl",
                                                    "items=200"])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = load_adapter(args.adapter)
    s, r = base.sharer, base.receiver
    items, facts = held_out_items(base, dotlist(args.data), limit=args.limit, data_root=args.data_root,
                                  only=args.only)
    contexts, used = pick([dotlist(args.cut_on)], "--cut-on", args.data_root, 0, distinct_contexts=True)
    with torch.no_grad():
        codes = torch.cat([base.send(it.sharer_context).codes for it in contexts])
    print(f"cut codes: {len(codes)} tokens of {len(contexts)} contexts, {time.perf_counter() - t0:.0f} s", flush=True)
    maps = {}
    for k in sorted(args.ranks):
        if k > base.map.rank:
            raise SystemExit(f"--ranks: {k} is above the adapter's rank {base.map.rank}")
        to_code, up_k, kept = cut_factors(base.map, codes, k)
        low = LowRank(base.map.down.detach() @ to_code, up_k, base.map.x_mean, base.map.x_std, base.map.y_mean)
        folder = export_token_map(low, out / "maps" / f"rank{k}", sharer=s, receiver=r, overwrite=True)
        maps[k] = (to_code, load_adapter(folder, sharer=s, receiver=r), kept)
    with torch.no_grad():
        sent = [base.send(it.sharer_context) for it in items]
    results = {"n": len(items), "item_ids": [it.id for it in items], "scores": {}, "predictions": {},
               "selection": facts | {"cut_on": used, "cut_tokens": len(codes), "adapter": str(args.adapter)}}
    golds = [it.answers for it in items]
    for k, (to_code, adapter, kept) in maps.items():
        for q in args.quantize:
            name = f"rank {k} {'fp32' if q == 'none' else q}"
            texts, per_token = [], []
            for start in range(0, len(items), args.batch_size):
                batch = []
                for it, msg in zip(items[start:start + args.batch_size], sent[start:start + args.batch_size]):
                    m = TokenMessage(msg.codes @ to_code, adapter.expected_header() | {"head": msg.header["head"]})
                    data = m.to_bytes(q)
                    per_token.append(len(data) / len(m.codes))
                    batch.append(data)
                qs = [it.question for it in items[start:start + args.batch_size]]
                texts += adapter.receive(batch, qs, max_new_tokens=args.max_new_tokens)
            preds = [first_line(t) for t in texts]
            scores = squad_scores(preds, golds) | {"contains": contains_rate(texts, golds), "rank": k,
                                                   "quantize": q, "bytes_per_token": statistics.mean(per_token),
                                                   "energy_kept": kept}
            results["scores"][name] = scores
            results["predictions"][name] = [{"id": it.id, "pred": p, "text": t, "gold": it.answers}
                                            for it, p, t in zip(items, preds, texts)]
            print(f"{name}: F1 {100 * scores['f1']:.1f} EM {100 * scores['em']:.1f} contains "
                  f"{100 * scores['contains']:.1f} "
                  f"{scores['bytes_per_token']:.0f} B/token, {time.perf_counter() - t0:.0f} s", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(report(results, len(items)))
    plot(results, out / "rate.png")


def report(results: dict, n: int) -> str:
    rows = ["| rank | precision | bytes / context token | F1 | EM | contains | energy kept by the cut |",
            "|---:|---|---:|---:|---:|---:|---:|"]
    for sc in results["scores"].values():
        prec = "fp32" if sc["quantize"] == "none" else sc["quantize"]
        rows.append(f"| {sc['rank']} | {prec} | {sc['bytes_per_token']:.0f} | {100 * sc['f1']:.1f} | "
                    f"{100 * sc['em']:.1f} | {100 * sc['contains']:.1f} | {sc['energy_kept']:.3f} |")
    return ("# Per-token messages: bytes against accuracy\n\n" + "\n".join(rows) +
            f"\n\n{n} items; one trained map cut to each rank on training contexts' codes; greedy, first line; EM, F1 "
            f"and contains in %; bytes per token include the message's header (about 600 bytes a message).\n")


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for q in dict.fromkeys(sc["quantize"] for sc in results["scores"].values()):
        pts = sorted((sc["bytes_per_token"], 100 * sc["f1"]) for sc in results["scores"].values()
                     if sc["quantize"] == q)
        ax.plot(*zip(*pts), marker="o", label="fp32" if q == "none" else q)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per context token")
    ax.set_ylabel("SQuAD F1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
