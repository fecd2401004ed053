"""Shared-context time to first token: fused vs receiver alone vs the sharer's prefill, in one run.

    python benchmarks/shared_ttft.py [--adapter DIR] [--recipe recipes/quickstart.yaml] [--repeats 5]

Latency definition (the one ``lcf eval`` uses for its TTFT column, :func:`lcf.eval.harness.measure_latency`):
a 1-token greedy generation at batch 1 through the evaluation's systems, prompt text to first token,
tokenisation and alignment included: ``AdapterSystem`` (sharer prefill + receiver prefill + fusion
+ first token) and ``ReceiverAlone`` on the same adapter (the receiver's prefill + first token, the
sharer never runs); the sharer's and the receiver's prefills overlap as the library does by default
(CUDA side streams, for batches of 2+ rows only, so not here; on CPU a worker thread when torch has >= 2
intra-op threads; ``--overlap`` forces CUDA side streams at batch 1; ``--sequential``
adds fusion with the prefills one after the other). ``sharer prefill`` is the sharer's prompt prefill alone (what fusion adds before
the translator). ``--eval-sharer`` adds ``lcf eval``'s sharer column (``SharerAlone``: the sharer answering
on its own, in its own template, LM head included), which is not the sharer's share of fusion. The three are interleaved run by run, medians of ``--repeats`` runs after a warm-up.

Without ``--adapter``, a freshly built (untrained) adapter of the recipe's translator is exported to
a temporary folder and loaded through the runtime: latency does not depend on the weights. Prompts
are cut from one English text to about 50, 120 and 300 receiver prompt tokens (chat template
included). The last line is fused / (receiver + sharer) at about 120 tokens (target <= 1.05).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from lcf.config import load_recipe, validate_recipe
from lcf.eval.harness import elapsed_ms, measure_latency
from lcf.eval.systems import AdapterSystem, ReceiverAlone, SharerAlone
from lcf.export import adapter_config, write_adapter
from lcf.pair import build_pair
from lcf.runtime import load_adapter
from lcf.training.run import build_translator

TEXT = (
    "The harbour town kept its old lighthouse long after the ships had stopped needing it. Every evening the "
    "keeper climbed the spiral stairs, wound the clockwork and lit the lamp, partly out of habit and partly "
    "because the children of the town liked to watch the beam sweep across the water. In winter the storms "
    "came in from the north and the waves broke over the sea wall, and the fishermen stayed home mending "
    "their nets by the fire. In summer the town filled with visitors who walked along the cliffs, bought "
    "smoked fish at the market and asked the keeper the same questions about shipwrecks and ghosts. He "
    "answered them patiently, adding a new detail every year, so that the stories grew longer and stranger "
    "with time. The mayor once proposed replacing the lamp with an electric one that would switch itself on "
    "at dusk, but the town voted against it, and the keeper went on climbing the stairs every evening until "
    "his granddaughter took over the job. She kept a logbook of every ship she saw, every storm and every "
    "visitor who asked about ghosts, and after twenty years the logbook filled a whole shelf of the library."
)
TARGETS = (50, 120, 300)


def fresh_adapter(recipe: dict, folder: str) -> str:
    torch.manual_seed(recipe.get("seed", 0))
    pair = build_pair(recipe)
    translator = build_translator(recipe, pair)
    cfg = adapter_config(translator, translator_type=recipe["translator"]["type"], pair=pair, recipe=recipe)
    write_adapter(folder, translator, cfg)
    return folder


def overlapped_by_default(comm, device) -> bool:
    """Whether the communicator's defaults overlap the sharer's prefill with the receiver's here (batch 1)."""
    if str(device).startswith("cuda"):
        return bool(comm.overlap_prefills)  # None: only for 2 or more rows
    flag = comm.cpu_overlap_prefills
    return torch.get_num_threads() >= 2 if flag is None else bool(flag)


def prompt_of(adapter, tokens: int) -> tuple[str, int]:
    """The longest prefix (in words) of TEXT, repeated as needed, whose receiver prompt has <= ``tokens`` tokens."""
    words = (TEXT + " ") * 4
    words = words.split()

    def length(k: int) -> int:
        return int(adapter.encode([" ".join(words[:k])])["receiver_prompt_ids"].shape[1])
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if length(mid) <= tokens else (lo, mid - 1)
    return " ".join(words[:lo]), length(lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", help="an exported adapter (default: a fresh one of the recipe's translator)")
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sequential", action="store_true",
                    help="also time fusion with the two prefills one after the other (the fused column uses the "
                         "library's default: overlapped on CUDA and on CPU with >= 2 intra-op threads)")
    ap.add_argument("--eval-sharer", action="store_true",
                    help="also time `lcf eval`'s sharer column (SharerAlone: the sharer answering in its own template)")
    ap.add_argument("--per-layer", action="store_true", help="the translator's per-layer reference path")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", help="load the adapter and its models here (e.g. cuda; default: the runtime's)")
    ap.add_argument("--dtype", help="the models' dtype (e.g. bfloat16; default: the cards')")
    ap.add_argument("--overlap", action="store_true",
                    help="CUDA: also time fusion with the prefills on side streams (Communicator.overlap_prefills=True)")
    ap.add_argument("--cuda-threads", action="store_true",
                    help="CUDA: also time fusion with the sharer's side-stream work queued from a worker thread "
                         "(Communicator.cuda_overlap_threads)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.adapter or fresh_adapter(validate_recipe(load_recipe(args.recipe)), tmp + "/adapter")
        adapter = load_adapter(folder, device=args.device, dtype=args.dtype)
    fused, alone = AdapterSystem(adapter), ReceiverAlone(adapter)
    comm, device = adapter.communicator, fused.device
    tr = adapter.translator
    if args.per_layer:
        tr.stacked = False
    print(f"adapter {args.adapter or 'fresh ' + str(tr.init_args)} ({type(tr).__name__}, "
          f"{'stacked' if getattr(tr, 'stacked', False) else 'per-layer'} path); batch 1, median of {args.repeats} "
          f"interleaved runs after a warm-up; torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; "
          f"prefills {'overlapped' if overlapped_by_default(comm, device) else 'one after the other'} in `fused`")
    print(f"{'prompt tokens':>13} {'sharer':>7} {'fused ms':>9} {'receiver ms':>12} {'sharer prefill ms':>18} "
          f"{'fused/(r+s)':>12} {'fused/r':>8}")
    headline = None
    for target in TARGETS:
        prompt, n = prompt_of(adapter, target)
        batch = {k: v.to(device) for k, v in adapter.encode([prompt]).items()}
        s_ids, s_mask = batch["sharer_prompt_ids"], batch["sharer_prompt_mask"]
        parts = {
            "fused": lambda: fused.generate([prompt], max_new_tokens=1),
            "receiver": lambda: alone.generate([prompt], max_new_tokens=1),
            "sharer": lambda: comm._prefill(comm.sharers[0], s_ids, s_mask),
        }
        if args.eval_sharer:
            sharer_alone = SharerAlone(adapter)
            parts["eval sharer"] = lambda: sharer_alone.generate([prompt], max_new_tokens=1)
        if args.sequential:
            def sequential():
                saved = comm.cpu_overlap_prefills, comm.overlap_prefills
                comm.cpu_overlap_prefills, comm.overlap_prefills = False, False
                try:
                    fused.generate([prompt], max_new_tokens=1)
                finally:
                    comm.cpu_overlap_prefills, comm.overlap_prefills = saved
            parts["sequential"] = sequential
        if args.overlap or args.cuda_threads:
            def with_overlap(threads: bool):
                saved = comm.overlap_prefills
                comm.overlap_prefills, comm.cuda_overlap_threads = True, threads
                try:
                    fused.generate([prompt], max_new_tokens=1)
                finally:
                    comm.overlap_prefills, comm.cuda_overlap_threads = saved, False
            if args.overlap:
                parts["streams"] = lambda: with_overlap(False)
            if args.cuda_threads:
                parts["threads"] = lambda: with_overlap(True)
        for fn in parts.values():
            fn()  # warm-up
        times = {k: [] for k in parts}
        for _ in range(args.repeats):
            for k, fn in parts.items():
                times[k].append(elapsed_ms(fn, device))
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["fused"] / (med["receiver"] + med["sharer"])
        print(f"{n:>13} {s_ids.shape[1]:>7} {med['fused']:>9.1f} {med['receiver']:>12.1f} {med['sharer']:>18.1f} "
              f"{ratio:>12.3f} {med['fused'] / med['receiver']:>8.3f}"
              + (f"   sequential {med['sequential']:.1f} ms, / (r+s) "
                 f"{med['sequential'] / (med['receiver'] + med['sharer']):.3f}" if args.sequential else "")
              + (f"   streams {med['streams']:.1f} ms, / r {med['streams'] / med['receiver']:.3f}"
                 if args.overlap else "")
              + (f"   threads {med['threads']:.1f} ms, / r {med['threads'] / med['receiver']:.3f}"
                 if args.cuda_threads else "")
              + (f"   eval sharer {med['eval sharer']:.1f} ms, fused / (r + eval sharer) "
                 f"{med['fused'] / (med['receiver'] + med['eval sharer']):.3f}" if args.eval_sharer else ""), flush=True)
        if target == 120:
            headline = (n, ratio)
            # the evaluation's own latency function on the same prompt (its TTFT column), for comparison
            ev = {k: measure_latency(sys_, prompt, runs=args.repeats, new_tokens=1)["ttft_ms"]
                  for k, sys_ in (("fused", fused), ("receiver", alone))}
            eval_line = (f"lcf eval's measure_latency on the {n}-token prompt: fused {ev['fused']:.1f} ms "
                         f"({ev['fused'] / med['fused'] - 1:+.1%} vs above), receiver {ev['receiver']:.1f} ms "
                         f"({ev['receiver'] / med['receiver'] - 1:+.1%}); fused / (receiver + sharer prefill) "
                         f"{ev['fused'] / (ev['receiver'] + med['sharer']):.3f}")
    print(eval_line)
    print(f"fused / (receiver + sharer prefill) at {headline[0]} receiver prompt tokens, batch 1: "
          f"{headline[1]:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
