"""Time to first token of LCF-X vs a 100-token text message, and the accuracy of both, in one run.

    python benchmarks/xc_ttft.py [ADAPTER_OR_RECIPE] [--tokens 100] [--repeats 5] [--items 50]

Both systems start from the same held-out item: the sharer holds the context, the receiver the
question. Text: the sharer writes exactly ``--tokens`` tokens (forced length), the receiver reads them
and produces its first answer token. LCF-X: the sharer prefills the context, the compressor
summarises it, the summary is serialised to a latent message and parsed back, the receiver prefills
the question with the summary fused and produces its first token. Medians of ``--repeats`` batch-1
runs after a warm-up. Accuracy (EM / F1, greedy, free-length messages up to ``--tokens``) on
``--items`` held-out items.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from lcf.eval.compose import resolve_adapter
from lcf.eval.xc import LatentXC, TextMessage, evaluate_xc, held_out_items
from lcf.eval.harness import elapsed_ms
from lcf.runtime import load_adapter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter", nargs="?", default="recipes/crosscontext.yaml", help="adapter folder, run or recipe")
    ap.add_argument("--tokens", type=int, default=100, help="text message length")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--items", type=int, default=50, help="held-out items for the accuracy columns")
    args = ap.parse_args()
    torch.manual_seed(0)
    adapter = load_adapter(resolve_adapter(args.adapter))
    items, _ = held_out_items(adapter, limit=args.items)
    text, latent = TextMessage(adapter, args.tokens, exact=True), LatentXC(adapter)
    one = items[:1]
    ttft = {}
    for system in (text, latent):
        system.answer(one, 1)  # warm-up
        ttft[system.name] = statistics.median(
            elapsed_ms(lambda: system.answer(one, 1), adapter._device()) for _ in range(args.repeats))
    accuracy = evaluate_xc([TextMessage(adapter, args.tokens), latent], items, latency_runs=0)["scores"]
    print(f"cross-context TTFT, batch 1, median of {args.repeats} runs (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {adapter._device()}); accuracy on {len(items)} held-out items")
    print(f"{'system':<22}{'TTFT ms':>10}{'EM':>8}{'F1':>8}{'bytes sent':>12}")
    for system, acc in zip((text, latent), accuracy.values()):
        print(f"{system.name + (' (exact)' if system is text else ''):<22}{ttft[system.name]:>10.1f}"
              f"{100 * acc['em']:>8.1f}{100 * acc['f1']:>8.1f}{acc['bytes_sent']:>12.0f}")
    print(f"TTFT ratio text-{args.tokens} / lcf-x: {ttft[text.name] / ttft[latent.name]:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
