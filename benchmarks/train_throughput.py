"""Quickstart training throughput: the stacked translator path against the per-layer reference path.

    python benchmarks/train_throughput.py [--recipe recipes/quickstart.yaml] [--steps 10] [--paths both] [--bucket]

The reference is today's per-layer path with the prefills run one after the other; the new path is
the stacked translator with the library's defaults (on CPU with >= 2 intra-op threads the sharer's
prefill overlaps the receiver's; ``--no-overlap`` switches that off). Both paths start from the same
translator weights and the same seed, see the same batches (the recipe's training features, shuffled
with its seed, cut into ``trainer.batch_size`` batches; with ``--bucket`` the new path gets the same
16 batches of examples in the length-bucketed order of ``data.bucket_by_length`` and both paths see all of them) and
train with the recipe's optimiser settings (AdamW, warm-up + linear decay, gradient clipping, gate
temperature annealing). Steps are interleaved (per-layer step k, stacked step k, ...) with each path
keeping its own random-number state, so drift of a shared CPU hits both alike. Prints every step's
loss for both paths, the largest loss difference (same batches only), the response tokens per second of each path (sum
of tokens over sum of step times, first step excluded as warm-up) and, as the last line, the ratio.

``--paths per_layer`` runs one path only (also on a checkout older than the stacked path).
``--compile MODE`` runs the stacked path with the frozen LLMs' decoder bodies under ``torch.compile``
(``trainer.compile_models``; the per-layer reference stays eager: the compiled call is swapped in and
out around each stacked step); ``--warmup N`` leaves the first N steps (compilation) out of the timing;
``--pad-to-multiple N`` pads both paths' batches alike (``data.pad_to_multiple``: fewer shapes to compile).
"""
from __future__ import annotations

import argparse
import copy
import math
import random
import statistics
import time

import torch

from lcf.communicator import Communicator
from lcf.config import load_recipe, validate_recipe
from lcf.data.features import pad_token_id
from lcf.data.instruct import collate
from lcf.models.kv import decoder
from lcf.pair import build_pair
from lcf.training.run import build_data, build_translator
from lcf.translators.base import annealed_temperature


def set_path(module: torch.nn.Module, path: str) -> None:
    if hasattr(module, "stacked"):
        module.stacked = path == "stacked"
    elif path != "per_layer":
        raise SystemExit("this checkout has no stacked translator path; run with --paths per_layer")


def make_optimizer(params, trainer: dict, total: int):
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": trainer["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=trainer["lr"])
    warmup = int(math.ceil(trainer["warmup_ratio"] * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(total - warmup, 1)))
    return opt, sched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--paths", choices=["both", "per_layer", "stacked"], default="both")
    ap.add_argument("--bucket", action="store_true", help="length-bucketed batches (data.bucket_by_length)")
    ap.add_argument("--no-overlap", action="store_true",
                    help="stacked path without the CPU prefill overlap (on by default with >= 2 threads)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--compile", default=None, help="torch.compile mode for the frozen LLMs on the stacked path")
    ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the timing")
    ap.add_argument("--pad-to-multiple", type=int, default=1, help="pad every batch length to a multiple of this")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. data.max_prompt_tokens=64")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, list(args.overrides))
    bs = recipe["trainer"]["batch_size"]
    pool_size = bs * (16 if args.bucket else args.steps)  # a bucket holds 16 batches
    recipe["data"]["train_size"] = pool_size
    recipe["data"]["val_size"] = 1
    recipe = validate_recipe(recipe)
    trainer = recipe["trainer"]
    torch.manual_seed(recipe.get("seed", 0))
    pair = build_pair(recipe)
    translator = build_translator(recipe, pair)
    train, _ = build_data(recipe).prepare(pair.receiver.tokenizer, pair.sharer.tokenizer, pair.aligner)
    pads = pad_token_id(pair.receiver.tokenizer), pad_token_id(pair.sharer.tokenizer)
    shuffled = list(train)
    random.Random(recipe.get("seed", 0)).shuffle(shuffled)
    orders = {"per_layer": shuffled, "stacked": shuffled}
    if args.bucket:  # the new path in the training sampler's length-bucketed order (data.bucket_by_length)
        from lcf.data.datamodule import receiver_length
        from lcf.data.sampling import EpochSampler

        order = EpochSampler(train, batch_size=bs, seed=recipe.get("seed", 0), bucket_by_length=True,
                             lengths=[receiver_length(f) for f in train]).order(0)
        orders["stacked"] = [train[i] for i in order]
    steps = len(train) // bs if args.bucket else args.steps  # bucketed: every example once on both paths
    batches = {p: [collate(rows[i:i + bs], *pads, pad_to_multiple=args.pad_to_multiple)
                   for i in range(0, len(rows) - bs + 1, bs)][:steps]
               for p, rows in orders.items()}
    for p in ("per_layer", "stacked") if args.bucket else ("stacked",):
        real = sum(int(b["receiver_prompt_mask"].sum() + b["response_mask"].sum()) for b in batches[p])
        padded = sum(b["receiver_prompt_mask"].numel() + b["response_mask"].numel() for b in batches[p])
        print(f"receiver padding fraction of the {p if args.bucket else ''} batches: {1 - real / padded:.4f}"
              f"{' (length-bucketed)' if args.bucket and p == 'stacked' else ''}", flush=True)
    paths = ["per_layer", "stacked"] if args.paths == "both" else [args.paths]

    runs = {}
    for path in paths:
        tr = copy.deepcopy(translator)
        set_path(tr, path)
        comm = Communicator(pair.receiver.model, [pair.sharer.model], [tr]).train()
        # today's reference: per-layer, prefills one after the other; the new path: the library's defaults
        comm.cpu_overlap_prefills = None if path == "stacked" and not args.no_overlap else False
        opt, sched = make_optimizer([p for p in tr.parameters() if p.requires_grad], trainer, trainer["max_steps"])
        torch.manual_seed(recipe.get("seed", 0))
        runs[path] = {"comm": comm, "tr": tr, "opt": opt, "sched": sched, "rng": torch.get_rng_state(),
                      "loss": [], "time": []}
    bodies = [decoder(pair.receiver.model), decoder(pair.sharer.model)]
    compiled = [torch.compile(b._call_impl, mode=args.compile) for b in bodies] if args.compile else None
    anneal = trainer.get("gate_anneal_steps") or trainer["max_steps"]
    tokens = {p: [] for p in paths}
    for step in range(steps):
        for path in paths:
            batch = batches[path][step]
            tokens[path].append(int(batch["response_mask"].sum()))
            r = runs[path]
            torch.set_rng_state(r["rng"])
            for body, fn in zip(bodies, compiled or []):  # what nn.Module.compile sets; None: eager
                body._compiled_call_impl = fn if path == "stacked" else None
            t0 = time.perf_counter()
            r["tr"].gates.set_temperature(annealed_temperature(
                step, anneal, trainer["gate_temperature_start"], trainer["gate_temperature_end"]))
            loss = r["comm"](batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(r["tr"].parameters(), trainer["grad_clip"])
            r["opt"].step()
            r["sched"].step()
            r["opt"].zero_grad(set_to_none=True)
            r["time"].append(time.perf_counter() - t0)
            r["rng"] = torch.get_rng_state()
            r["loss"].append(loss.item())
        print(f"step {step}: " + ", ".join(
            f"{p} {tokens[p][-1]} response tokens, receiver prompt {batches[p][step]['receiver_prompt_ids'].shape[1]},"
            f" loss {runs[p]['loss'][-1]:.6f} {runs[p]['time'][-1] * 1000:.0f} ms" for p in paths), flush=True)
    overlap = {p: runs[p]["comm"].cpu_overlap_prefills for p in paths}
    print(f"{steps} steps of batch {bs}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"translator {recipe['translator']}; steps 0-{args.warmup - 1} excluded from timing (warm-up)"
          f"{f'; stacked path with the frozen LLMs compiled ({args.compile})' if args.compile else ''}"
          f"{f'; lengths padded to multiples of {args.pad_to_multiple}' if args.pad_to_multiple > 1 else ''}")
    rate = {}
    for path in paths:
        t = runs[path]["time"][args.warmup:]
        rate[path] = sum(tokens[path][args.warmup:]) / sum(t)
        print(f"  {path:<10} {rate[path]:8.1f} response tokens/s  (median step {statistics.median(t) * 1000:.0f} ms; "
              f"prefill overlap {'auto' if overlap[path] is None else overlap[path]}"
              f"{', length-bucketed' if args.bucket and path == 'stacked' else ''})")
    if len(paths) == 2 and args.bucket:
        print("losses not compared: the two paths saw the same examples in different batches")
    elif len(paths) == 2:
        diff = max(abs(a - b) for a, b in zip(runs["per_layer"]["loss"], runs["stacked"]["loss"]))
        per_step = statistics.median(a / b for a, b in zip(runs["per_layer"]["time"][args.warmup:],
                                                           runs["stacked"]["time"][args.warmup:]))
        print(f"max loss difference over {steps} steps: {diff:.2e} (target <= 1e-4)")
        print(f"median per-step time ratio per_layer / stacked: {per_step:.3f}")
    if len(paths) == 2:
        print(f"throughput stacked / per_layer: {rate['stacked'] / rate['per_layer']:.3f} (target >= 1.25)")


if __name__ == "__main__":
    main()
