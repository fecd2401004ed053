"""Prefill with vs without LM-head logits, for both real models, measured in one run.

    python benchmarks/prefill.py [--batch 4] [--tokens 128] [--repeats 5]

Prints the median time of each variant and the ratio (with / without). Communication prefill in lcf
uses the model body only (``lcf.models.kv.prefill``); a plain forward also projects every prompt
position onto the vocabulary, which dominates on Gemma-3's 262k-token vocabulary.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lcf.models import load_model
from lcf.models.kv import prefill


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"prefill of {args.batch}x{args.tokens} tokens, median of {args.repeats} runs "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"{'model':<24}{'with LM head':>14}{'without':>10}{'ratio':>8}")
    for name in args.models:
        model = load_model(name).model
        ids = torch.randint(10, 5000, (args.batch, args.tokens))
        with torch.inference_mode():
            full = median_time(lambda: model(ids, use_cache=True), args.repeats)
            body = median_time(lambda: prefill(model, ids), args.repeats)
        print(f"{name:<24}{full:>13.3f}s{body:>9.3f}s{full / body:>7.2f}x")


if __name__ == "__main__":
    main()
