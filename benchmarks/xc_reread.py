"""Receiver-side time to first token: a per-token message against the receiver reading the context itself.

    python benchmarks/xc_reread.py [--adapter DIR] [--rank 512] [--quantize int8] [--tokens 128 512 2048 4096 8000]
                                   [--repeats 3] [--data-root DIR]

For each context length N (receiver tokens of the context; SQuAD dev paragraphs of different articles, joined
and cut to N tokens; the question is about the first paragraph), batch 1, real pair, medians of ``--repeats``
runs after a warm-up:

* **message, receiver side**: from the message's bytes in memory to the first answer token: parse and check
  them, dequantise, prefill the receiver's template head, decode the codes into every layer's K/V
  (:mod:`lcf.models.placement`), read the question on top and pick the first token (``adapter.receive``);
* **own reading**: the receiver formats, tokenizes and prefills the context and the question itself and picks
  the first token (only the last position's logits are computed);
* **sender side**: the sharer prefills the context, its rows are aligned to the receiver's tokens, encoded and
  serialised (``adapter.send(...).to_bytes(...)``), reported separately and as a total with the receiver side.

The receiver-side time is also split into its parts (one run each, after the medians). Without ``--adapter`` a
random map of ``--rank`` is exported to a temporary folder: latency does not depend on the map's weights. The
last line is the ratio own reading / message at the largest length up to 4,096 tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lcf.align.templates import format_messages
from lcf.data.xc.features import encode_prompt, receiver_message
from lcf.export import export_token_map
from lcf.models.loading import load_model
from lcf.models.rows import Prepared, context_span, greedy, stop_ids
from lcf.runtime import load_adapter
from lcf.runtime.limits import truncate_text
from lcf.runtime.token_kv import PLACEHOLDER, LowRank, TokenMessage
from lcf.token_map.model import row_width


def long_context(path: Path, tokenizer, n: int) -> tuple[str, str]:
    """Distinct SQuAD dev paragraphs (file order) joined until ``n`` receiver tokens, cut to ``n``; the first
    paragraph's first question."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    seen, parts = set(), []
    for r in rows:
        if r["context"] in seen:
            continue
        seen.add(r["context"])
        parts.append(r["context"].strip())
        text = "\n\n".join(parts)
        if len(tokenizer(text, add_special_tokens=False).input_ids) > n:
            return truncate_text(tokenizer, text, n, keep="start"), rows[0]["question"]
    raise SystemExit(f"{path} holds fewer than {n} tokens of distinct paragraphs; ask for shorter contexts")


def ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def once(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return 1000 * (time.perf_counter() - t0), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default=None, help="a per-token adapter folder (default: a random map)")
    ap.add_argument("--receiver", default="smollm2-135m-instruct")
    ap.add_argument("--sharer", default="gemma3-270m")
    ap.add_argument("--rank", type=int, default=512)
    ap.add_argument("--quantize", default="int8", choices=["none", "int8", "int4"])
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 2048, 4096, 8000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-root", default=os.environ.get("LCF_DATA_ROOT"), help="the shared data folder")
    args = ap.parse_args()
    if not args.data_root:
        raise SystemExit("give --data-root (or set LCF_DATA_ROOT): the folder holding squad/")
    squad = Path(args.data_root) / "squad" / "squad_v1.1_dev_sample_dev.jsonl"
    torch.manual_seed(0)
    r, s = load_model(args.receiver, dtype="float32"), load_model(args.sharer, dtype="float32")
    folder = args.adapter
    if folder is None:
        from lcf.models.kv import layer_specs

        ds, dr = row_width(layer_specs(s.model.config)), row_width(layer_specs(r.model.config))
        low = LowRank(torch.randn(ds, args.rank) * 0.01, torch.randn(args.rank, dr) * 0.01, torch.zeros(ds),
                      torch.ones(ds), torch.zeros(dr))
        folder = export_token_map(low, tempfile.mkdtemp() + "/adapter", sharer=s, receiver=r)
    adapter = load_adapter(folder, sharer=s, receiver=r)
    tok, model = r.tokenizer, r.model
    print(f"receiver {args.receiver}, sharer {args.sharer}; rank {adapter.map.rank}, {args.quantize}; batch 1, cpu, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; median of {args.repeats} after a warm-up")
    print(f"{'tokens':>7} {'own reading':>12} {'message rx':>11} {'ratio':>7} {'sender':>9} {'msg total':>10} "
          f"{'bytes':>9} {'B/token':>8}")
    ratios, parts = {}, {}
    with torch.no_grad():
        for n in args.tokens:
            context, question = long_context(squad, tok, n)
            data = adapter.send(context).to_bytes(args.quantize)

            def own() -> None:
                text = format_messages(tok, [{"role": "user", "content": receiver_message(question, context)}]).text
                ids = torch.tensor([encode_prompt(tok, text)[0]])
                model(input_ids=ids, logits_to_keep=1).logits[0, -1].argmax()

            def receive() -> None:
                adapter.receive(data, question, max_new_tokens=1)

            def send() -> None:
                adapter.send(context).to_bytes(args.quantize)

            t_own, t_msg, t_send = ms(own, args.repeats), ms(receive, args.repeats), ms(send, args.repeats)
            tokens = TokenMessage.from_bytes(data).codes.shape[0]
            ratios[n] = t_own / t_msg
            print(f"{tokens:>7} {t_own:>10.0f}ms {t_msg:>9.0f}ms {ratios[n]:>6.1f}x {t_send:>7.0f}ms "
                  f"{t_send + t_msg:>8.0f}ms {len(data):>9} {len(data) / tokens:>8.1f}")
            parts[n] = split_receive(adapter, data, question)
    print("receiver side, one run split into parts (ms): " + "; ".join(
        f"{n}: " + ", ".join(f"{k} {v:.0f}" for k, v in p.items()) for n, p in parts.items()))
    at = max([n for n in ratios if n <= 4096] or ratios)
    print(f"TTFT ratio own reading / message (receiver side) at {at} tokens: {ratios[at]:.1f}x (target >= 8x)")


def split_receive(adapter, data: bytes, question: str) -> dict[str, float]:
    """Where the receiver side's time goes, the steps of ``TokenAdapter.receive`` timed one by one."""
    model, tok = adapter.receiver.model, adapter.receiver.tokenizer
    t_parse, msg = once(lambda: adapter.read_message(data))
    span = context_span(tok, question, PLACEHOLDER)
    ids = torch.tensor([span.ids])
    t_head, head = once(lambda: adapter.head_cache(span.ids[:span.a]))
    p = Prepared(head, span.a, span.a, ids[0, span.b:])
    t_dec, (view, start) = once(lambda: adapter.place(msg, p))
    t_first, _ = once(lambda: greedy(model, [view], [p.tail], [start], 1, stop_ids(model, tok)))
    return {"parse": t_parse, "head": t_head, "decode": t_dec, "question+first token": t_first}


if __name__ == "__main__":
    main()
