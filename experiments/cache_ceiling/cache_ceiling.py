"""The ceiling of a latent message: how much of a context the receiver keeps when its *own* cache of the
context is compressed the way a message compresses it. No training, no sharer.

    python experiments/cache_ceiling/cache_ceiling.py smollm2-135m-instruct --out DIR --items 60 \\
        --data type=fact_transfer values=open phrasing=varied num_paragraphs=1

LCF-X hands the receiver a few K/V slots per layer and KV head instead of the context. Whatever the
sharer and the translator learn, the receiver cannot use a message better than the best slots of that
form, and the best slots it could be given are built from its own cache of the context. Here the
receiver reads the context as text (the prompt of ``receiver + full context``); its cache of the
context's tokens is then replaced by one of these before the question is read on top of it:

* ``text``: unchanged (must equal ``receiver + full context``: a check of the mechanics);
* ``mean-S``: each group of S consecutive context tokens becomes one slot, the mean of their K and of
  their V (cached keys already carry their rotary phase, as in ``span_pool``, which pools the same);
* ``rmean-S``: as ``mean-S``, but keys are averaged without their rotary phase (undone per position)
  and the mean is rotated to the group's last position: pooling that does not mix phases;
* ``last-S``: each group of S becomes its last token's K/V (a causal token has read its group);
* ``mean-all``: the whole context becomes one slot (LCF-X's single summary per layer and head);
* ``rank-R``: every context position of one layer (keys and values of all KV heads together) is
  projected onto the R leading principal directions of that layer, fitted on training-split contexts:
  what a joint low-rank bottleneck of width R keeps at best, linearly (LCF-128 has R = 128);
* ``int8`` / ``int4``: K/V quantised as latent messages quantise them (``lcf.runtime.messages``);
* controls ``zero`` (the context's K/V all zero) and ``mismatched`` (the next item's context cache);
* ``late-M`` (any method M, e.g. ``late-rank-128``): the question's tokens are computed *without* the
  context and only the last prompt token and the answer read the (compressed) context, as in fusion,
  where the receiver's prompt is prefilled first and its cache then edited by the message.

The tokens after the context (question, answer prompt) then run on the compressed cache at their
original positions, so nothing they compute can come from the uncompressed context. Greedy answers,
scored as ``lcf eval-xc`` scores them (EM / F1 on the first line, contains, other);
``results.json`` has the same layout, so ``python -m lcf.eval.paired ... --metric contains`` pairs them.

A research driver, not the library (moved out of ``lcf.eval``); its report: docs/results/crosscontext-ceiling.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lcf.errors import LCFError
from lcf.models.kv import KVView, cache_kwargs
from lcf.models.rows import Prepared, greedy, prepare_item, stop_ids, turn  # noqa: F401 (re-exported)
from lcf.runtime.messages import pack_int4, unpack_int4

DEFAULT_METHODS = ("text", "mean-2", "mean-4", "mean-8", "rmean-2", "rmean-4", "last-2", "last-4", "mean-all",
                   "rank-32", "rank-64",
                   "rank-128", "rank-256", "int8", "int4", "zero", "mismatched")

METHOD_FORMS = "text, mean-S, rmean-S, mean-all, last-S, rank-R, int8, int4, zero, mismatched (each also as late-M)"
LATE = "late-"


@torch.no_grad()
def late_tail(model: Any, p: Prepared) -> KVView:
    """K/V of the tail's tokens but the last, computed on the head alone: the question read *without* the
    context, as in fusion, where the prompt is prefilled before the message edits its cache."""
    from lcf.models.kv import decoder, extract_kv

    n = len(p.tail) - 1
    head = KVView([k[:, :, :p.a] for k in p.view.keys], [v[:, :, :p.a] for v in p.view.values], p.a, p.view.specs)
    if n == 0:
        return KVView([k[:, :, :0] for k in head.keys], [v[:, :, :0] for v in head.values], 0, head.specs)
    cache = head.to_cache(model)
    body = decoder(model)
    body(input_ids=p.tail[None, :-1], position_ids=torch.arange(p.b, p.b + n, device=p.tail.device)[None],
         attention_mask=torch.ones(1, p.a + n, dtype=torch.long, device=p.tail.device), use_cache=True,
         **cache_kwargs(body, cache))
    full = extract_kv(cache, model.config, seq_len=p.a + n)
    return KVView([k[:, :, p.a:] for k in full.keys], [v[:, :, p.a:] for v in full.values], n, full.specs)


def _groups(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def _int8(t: torch.Tensor) -> torch.Tensor:  # per head over (positions, dim), as LatentMessage int8
    scale = t.abs().amax(dim=(2, 3), keepdim=True).clamp(min=1e-12) / 127.0
    return torch.round(t / scale).clamp(-127, 127) * scale


def _int4(t: torch.Tensor) -> torch.Tensor:  # per head and position, as LatentMessage int4
    return torch.stack([unpack_int4(*pack_int4(row.float())) for row in t]).to(t.dtype)


class Basis:
    """Per-layer principal directions of the context's [K | V] (all KV heads) for ``rank-R``."""

    def __init__(self, means: list[torch.Tensor], directions: list[torch.Tensor]):
        self.means, self.directions = means, directions

    @classmethod
    def fit(cls, items: Sequence[Prepared]) -> Basis:
        if not items:
            raise LCFError("rank-R needs training contexts to fit its directions (--fit > 0)")
        means, directions = [], []
        for layer in range(items[0].view.num_layers):
            rows = torch.cat([_flat(*[t[..., p.a:p.b, :] for t in p.view.layer(layer)]) for p in items]).double()
            mean = rows.mean(0)
            _, _, vh = torch.linalg.svd(rows - mean, full_matrices=False)
            means.append(mean)
            directions.append(vh)  # (min(N, dim), dim), leading first (float64)
        return cls(means, directions)

    def project(self, layer: int, k: torch.Tensor, v: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows, mean = _flat(k, v).double(), self.means[layer]
        u = self.directions[layer][:rank]
        out = (mean + (rows - mean) @ u.T @ u).to(k.dtype)
        return _unflat(out, k.shape)


def _flat(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(1, H, T, D) keys and values -> (T, 2 * H * D) rows."""
    return torch.cat([k[0].transpose(0, 1).flatten(1), v[0].transpose(0, 1).flatten(1)], dim=1)


def _unflat(rows: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    _, h, t, d = shape
    k, v = rows.split(h * d, dim=1)
    return tuple(x.view(t, h, d).transpose(0, 1).unsqueeze(0).contiguous() for x in (k, v))


def rotary(model: Any) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """positions (T,) -> rotary (cos, sin), each (T, head_dim), of ``model``; None if it has no single
    ``rotary_emb`` (then ``rmean-S`` is refused)."""
    from lcf.models.kv import decoder

    emb = getattr(decoder(model), "rotary_emb", None)
    if emb is None:
        return None

    def fn(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probe = torch.zeros(1, dtype=next(model.parameters()).dtype, device=positions.device)
        cos, sin = emb(probe, positions[None])
        return cos[0], sin[0]
    return fn


def _rope_mean(k: torch.Tensor, groups: list[range], first: int, rope: Callable | None) -> torch.Tensor:
    """Mean of each group's keys taken without their rotary phase, re-rotated at the group's last position."""
    if rope is None:
        raise LCFError("rmean-S needs the model's rotary embedding (decoder.rotary_emb); this model has none")
    cos, sin = rope(torch.arange(first, first + k.shape[2], device=k.device))
    flat = turn(k, cos, -sin)
    mean = torch.stack([flat[:, :, g.start:g.stop].mean(2) for g in groups], dim=2)
    last = torch.tensor([g[-1] for g in groups], device=k.device)
    return turn(mean, cos[last], sin[last])


def compress(p: Prepared, method: str, *, basis: Basis | None = None, other: Prepared | None = None,
             rope: Callable | None = None) -> tuple[KVView, int]:
    """The cache [head; compressed context] and the position the tail starts at."""
    keys, values = [], []
    source = other if method == "mismatched" else p
    if method == "mismatched" and other is None:
        raise LCFError("mismatched needs another item")
    n = source.b - source.a
    for layer in range(p.view.num_layers):
        k, v = source.view.layer(layer)
        hk, hv = p.view.layer(layer)
        ck, cv = k[:, :, source.a:source.b], v[:, :, source.a:source.b]
        kind, _, arg = method.partition("-")
        if method in ("text", "mismatched"):
            pass
        elif method == "zero":
            ck, cv = torch.zeros_like(ck), torch.zeros_like(cv)
        elif method in ("int8", "int4"):
            fn = _int8 if method == "int8" else _int4
            ck, cv = fn(ck), fn(cv)
        elif kind == "rmean":
            groups = _groups(n, int(arg))
            ck = _rope_mean(ck, groups, source.a, rope)
            cv = torch.stack([cv[:, :, g.start:g.stop].mean(2) for g in groups], dim=2)
        elif kind in ("mean", "last"):
            groups = _groups(n, n if arg == "all" else int(arg))
            pick = (lambda t, g: t[:, :, g.start:g.stop].mean(2)) if kind == "mean" else (lambda t, g: t[:, :, g[-1]])
            ck, cv = (torch.stack([pick(t, g) for g in groups], dim=2) for t in (ck, cv))
        elif kind == "rank":
            if basis is None:
                raise LCFError("rank-R needs a fitted Basis")
            ck, cv = basis.project(layer, ck, cv, int(arg))
        else:
            raise LCFError(f"unknown method {method!r}; expected one of {METHOD_FORMS}")
        keys.append(torch.cat([hk[:, :, :p.a], ck], dim=2))
        values.append(torch.cat([hv[:, :, :p.a], cv], dim=2))
    return KVView(keys, values, keys[0].shape[2], p.view.specs), p.a + n


def _join(first: KVView, second: KVView) -> KVView:
    return KVView([torch.cat([a, b], dim=2) for a, b in zip(first.keys, second.keys)],
                  [torch.cat([a, b], dim=2) for a, b in zip(first.values, second.values)],
                  first.seq_len + second.seq_len, first.specs)


def valid_method(m: str) -> bool:
    m = m.removeprefix(LATE)
    kind, _, arg = m.partition("-")
    return (m in ("text", "int8", "int4", "zero", "mismatched", "mean-all")
            or (kind in ("mean", "rmean", "last", "rank") and arg.isdigit() and int(arg) > 0))


def run(model: Any, tokenizer: Any, items: Sequence[Any], methods: Sequence[str], *, fit: Sequence[Any] = (),
        template: str = "auto", max_new_tokens: int = 16, batch_size: int = 8, progress: bool = False
        ) -> dict[str, Any]:
    """Scores and predictions per method, in the layout of ``lcf eval-xc``'s results."""
    from lcf.eval.xc import contains_rate
    from lcf.eval.harness import first_line
    from lcf.eval.metrics import squad_scores

    bad = [m for m in methods if not valid_method(m)]
    if bad:
        raise LCFError(f"unknown methods {bad}; expected {METHOD_FORMS} (S, R: positive integers)")
    prep = [prepare_item(model, tokenizer, it.question, it.sharer_context, template) for it in items]
    basis = None
    if any(m.removeprefix(LATE).startswith("rank-") for m in methods):
        basis = Basis.fit([prepare_item(model, tokenizer, it.question, it.sharer_context, template) for it in fit])
    stop = stop_ids(model, tokenizer)
    golds = [it.answers for it in items]
    rope = rotary(model)
    res: dict[str, Any] = {"n": len(items), "item_ids": [it.id for it in items], "scores": {}, "predictions": {},
                           "context_tokens": [p.b - p.a for p in prep]}
    for method in methods:
        texts, slots = [], []
        for lo in range(0, len(prep), batch_size):
            chunk = range(lo, min(lo + batch_size, len(prep)))
            base = method.removeprefix(LATE)
            made = [compress(prep[i], base, basis=basis, other=prep[(i + 1) % len(prep)], rope=rope) for i in chunk]
            slots += [view.seq_len - prep[i].a for i, (view, _) in zip(chunk, made)]
            tails = [prep[i].tail for i in chunk]
            if method != base:  # the question's K/V come from a pass without the context (at the item's own
                # positions, whatever context is cached); only the last prompt token reads the context
                made = [(_join(v, late_tail(model, prep[i])), prep[i].b + len(prep[i].tail) - 1)
                        for i, (v, _) in zip(chunk, made)]
                tails = [t[-1:] for t in tails]
            new = greedy(model, [v for v, _ in made], tails, [s for _, s in made], max_new_tokens, stop)
            texts += [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]
        preds = [first_line(t) for t in texts]
        scores = squad_scores(preds, golds) | {"contains": contains_rate(texts, golds),
                                               "slots": sum(slots) / len(slots)}
        if any(it.distractors for it in items):
            scores["other"] = contains_rate(texts, [it.distractors or [""] for it in items])
        res["scores"][method] = scores
        if progress:
            print(f"{method}: contains {scores['contains']:.3f}, F1 {scores['f1']:.3f}", file=sys.stderr, flush=True)
        res["predictions"][method] = [{"id": it.id, "pred": p, "text": t, "gold": it.answers}
                                      for it, p, t in zip(items, preds, texts)]
    return res


def format_table(res: dict[str, Any]) -> str:
    other = any("other" in s for s in res["scores"].values())
    lines = ["| context cache | slots (mean) | EM | F1 | contains |" + (" other |" if other else ""),
             "|---|---:|---:|---:|---:|" + ("---:|" if other else "")]
    for m, s in res["scores"].items():
        cell = f" {100 * s.get('other', 0):.1f} |" if other else ""
        lines.append(f"| {m} | {s['slots']:.1f} | {100 * s['em']:.1f} | {100 * s['f1']:.1f} | "
                     f"{100 * s['contains']:.1f} |{cell}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from omegaconf import OmegaConf

    from lcf.models.loading import load_model
    from lcf.registry import datasets

    ap = argparse.ArgumentParser(prog="python experiments/cache_ceiling/cache_ceiling.py",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the receiver: card name, local folder or hub id")
    ap.add_argument("--out", required=True, help="folder for results.json and report.md")
    ap.add_argument("--data", nargs="+", required=True, metavar="KEY=VALUE", help="cross-context dataset, e.g. "
                    "type=squad_xc (any `lcf eval-xc --data`)")
    ap.add_argument("--data-root", default=None, help="data files root (default $LCF_DATA_ROOT)")
    ap.add_argument("--items", type=int, default=60, help="held-out items (seeded sample of the validation split)")
    ap.add_argument("--fit", type=int, default=64, help="training contexts the rank-R directions are fitted on")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    ap.add_argument("--template", default="auto")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    spec = OmegaConf.to_container(OmegaConf.from_dotlist(list(args.data)))
    if args.data_root:
        spec["data_root"] = args.data_root
    dataset = datasets.build(spec, "data")
    if not hasattr(dataset, "split_examples"):
        raise LCFError(f"data.type={spec.get('type')!r} is not a cross-context dataset")
    train, val = dataset.split_examples()
    rng = random.Random(args.seed)
    items = [val[i] for i in sorted(rng.sample(range(len(val)), min(args.items, len(val))))]
    fit = [train[i] for i in sorted(rng.sample(range(len(train)), min(args.fit, len(train))))]
    torch.manual_seed(args.seed)
    loaded = load_model(args.model, dtype="float32")
    res = run(loaded.model, loaded.tokenizer, items, args.methods, fit=fit, template=args.template,
              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=True)
    res["setup"] = {"model": args.model, "data": spec, "items": len(items), "fit": len(fit), "seed": args.seed}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    table = format_table(res)
    (out / "report.md").write_text(f"# Receiver reading its own compressed context cache\n\n{table}\n\n"
                                   f"{len(items)} held-out items of {spec.get('type')}; model {args.model}.\n")
    print(table)


if __name__ == "__main__":
    main()
