"""Time to first token of a per-token latent message vs a 100-token text message, on the real pair.

    python benchmarks/token_ttft.py [--adapter DIR] [--tokens 100] [--repeats 5] [--rank 512]

Per-token message (``lcf.runtime.token_kv``): the sharer prefills the context, its rows are encoded to
``rank`` numbers per receiver token and serialised (int8), the receiver parses them, decodes them into
its K/V, prefills its template head and the question on top, and produces the first answer token.
Text: the sharer writes exactly ``--tokens`` tokens (greedy, forced length), the receiver reads them with
the question and produces its first token. Also: the receiver reading the whole context itself. Batch
1, medians of ``--repeats`` runs after a warm-up. Without ``--adapter`` a random rank-``--rank`` map is
exported to a temporary folder: latency does not depend on the map's weights.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from lcf.align.templates import format_messages
from lcf.data.xc.features import receiver_message
from lcf.models.loading import load_model
from lcf.export import export_token_map
from lcf.runtime import load_adapter
from lcf.runtime.token_kv import LowRank

CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
           "in France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, "
           "under their leader Rollo, agreed to swear fealty to King Charles III of West Francia. Through "
           "generations of assimilation and mixing with the native Frankish and Roman-Gaulish populations, their "
           "descendants would gradually merge with the Carolingian-based cultures of West Francia.")
QUESTION = "In what country is Normandy located?"


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default=None, help="a per-token adapter folder (default: a random map)")
    ap.add_argument("--receiver", default="smollm2-135m-instruct")
    ap.add_argument("--sharer", default="gemma3-270m")
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rank", type=int, default=512)
    args = ap.parse_args()
    torch.manual_seed(0)
    r, s = load_model(args.receiver, dtype="float32"), load_model(args.sharer, dtype="float32")
    folder = args.adapter
    if folder is None:
        ds = sum(2 * k[1] * k[3] for k in _kv_shapes(s))
        dr = sum(2 * k[1] * k[3] for k in _kv_shapes(r))
        low = LowRank(torch.randn(ds, args.rank) * 0.01, torch.randn(args.rank, dr) * 0.01, torch.zeros(ds),
                      torch.ones(ds), torch.zeros(dr))
        folder = export_token_map(low, tempfile.mkdtemp() + "/adapter", sharer=s, receiver=r)
    adapter = load_adapter(folder, sharer=s, receiver=r)
    rt, st = r.tokenizer, s.tokenizer

    def token_message() -> None:
        data = adapter.send(CONTEXT).to_bytes("int8")
        adapter.receive(data, QUESTION, max_new_tokens=1)

    def text_message() -> None:
        prompt = format_messages(st, [{"role": "user", "content": f"Summarise for a reader:\n\n{CONTEXT}"}]).text
        ids = st(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        out = s.model.generate(ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
        note = st.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        _first_token(r, receiver_message(QUESTION, note))

    def own_context() -> None:
        _first_token(r, receiver_message(QUESTION, CONTEXT))

    systems = {"per-token message (int8)": token_message, f"text-{args.tokens}": text_message,
               "receiver reads the context": own_context}
    with torch.no_grad():
        times = {}
        for name, fn in systems.items():
            fn()  # warm-up
            times[name] = statistics.median(_ms(fn) for _ in range(args.repeats))
    msg = adapter.send(CONTEXT)
    print(f"TTFT, batch 1, median of {args.repeats} (torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cpu); context {len(msg.codes)} receiver tokens, rank {adapter.map.rank}")
    for name, ms in times.items():
        print(f"{name:<30}{ms:>10.1f} ms")
    print(f"message bytes: fp32 {len(msg.to_bytes())}, int8 {len(msg.to_bytes('int8'))}, "
          f"int4 {len(msg.to_bytes('int4'))}")
    ratio = times[f"text-{args.tokens}"] / times["per-token message (int8)"]
    print(f"TTFT ratio text-{args.tokens} / per-token message: {ratio:.1f}x (target >= 10x)")


def _kv_shapes(lm) -> list[torch.Size]:
    from lcf.models.kv import prefill

    view = prefill(lm.model, torch.tensor([[1, 2]]))
    return [view.keys[i].shape for i in range(view.num_layers)]


def _first_token(lm, user: str) -> None:
    text = format_messages(lm.tokenizer, [{"role": "user", "content": user}]).text
    ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    lm.model(input_ids=ids).logits[0, -1].argmax()


if __name__ == "__main__":
    main()
