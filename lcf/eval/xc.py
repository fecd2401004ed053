"""Cross-context evaluation: the sharer read a context, the receiver gets only the question.

Systems, all answering the same held-out items greedily (first line of the answer, SQuAD EM / F1):

* ``receiver alone`` — question only; ``receiver + own half`` — with the receiver's own part of the
  context (items that have one); ``receiver + full context`` — both parts (an upper bound, nothing
  is communicated: the receiver reads everything itself); ``full-short``: the same after three worked
  examples of short answers (:data:`SHORT_ANSWER_EXAMPLES`), the answer format a tuned message teaches;
* ``text-N`` — the sharer reads the context and writes a message of at most N tokens that the
  receiver reads before the question (:data:`SUMMARY_REQUEST`);
* ``lcf-x`` — the compressor's summary travels as a latent message (serialised and parsed back, as
  between two processes); ``lcf-x int8`` / ``lcf-x int4`` quantise it; controls ``lcf-x (zero)`` (all-zero summary)
  and ``lcf-x (mismatched)`` (another item's message) separate transfer from adaptation. With a per-token
  adapter (translator ``token_map``, :mod:`lcf.token_map`) the same choices give ``per-token message`` (its int8 / int4 codes,
  ``(mismatched)``, ``(zero code)``), sent and received through :mod:`lcf.runtime.token_adapter`.

Per system: EM, F1, contains (the answer text contains a gold answer), other (it contains a wrong
value the context also holds, e.g. another person's: items with ``distractors``), batch-1 time to first token (everything between "the sharer gets the context"
and "the receiver's first answer token", message writing included) and bytes sent.
"""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lcf.data.xc.dataset import full_context
from lcf.errors import LCFError
from lcf.eval.harness import elapsed_ms, first_line
from lcf.eval.metrics import squad_scores
from lcf.eval.systems import PlainModel, mismatch_partner
from lcf.runtime.kinds import FUSED, PER_TOKEN
from lcf.runtime.messages import LatentMessage
from lcf.runtime.token_kv import LowRank

SUMMARY_REQUEST = "{context}\n\nRewrite the key facts of the text above briefly, keeping every name and number."
#: worked examples of short answers before the context (system ``full-short``): the receiver reading the context
#: itself in the answer format a tuned message teaches (a span of the text, a few words), so that message vs own
#: reading compares the information carried rather than answer length
SHORT_ANSWER_EXAMPLES = (
    "Each question is answered with the fewest words of its text that answer it.\n\n"
    "Text: The lighthouse at Brennock Point was built in 1871 and painted red by the harbour board.\n"
    "Question: Who painted the lighthouse red?\nAnswer: the harbour board\n\n"
    "Text: Mira Olsen studied botany in Uppsala before she moved to Tasmania to work in eucalyptus forests.\n"
    "Question: Where did Mira Olsen study botany?\nAnswer: Uppsala\n\n"
    "Text: The river Tarn floods about once every twelve years, most often in early spring.\n"
    "Question: How often does the Tarn flood?\nAnswer: about once every twelve years")
XC_SYSTEMS: tuple[str, ...] = ("receiver", "own", "full", "full-short", "text", "lcf-x", "int8", "int4", "zero", "mean",
                                "mismatched")


class XCSystem:
    """One way for the receiver to answer a cross-context item."""

    name = "system"

    def __init__(self, adapter: Any):
        self.adapter = adapter

    def prepare(self, items: Sequence[Any]) -> tuple[list[str], Any, list[int]]:
        """(receiver's own contexts, sharer summary view or None, bytes sent per item)."""
        raise NotImplementedError

    @torch.no_grad()
    def answer(self, items: Sequence[Any], max_new_tokens: int, min_new_tokens: int = 0) -> tuple[list[str], list[int]]:
        """Greedy answers and bytes sent, for a batch of items."""
        own, view, sent = self.prepare(items)
        return self.adapter.answer([it.question for it in items], own, max_new_tokens=max_new_tokens,
                                   min_new_tokens=min_new_tokens, sharer_view=view), sent


class ReceiverOnly(XCSystem):
    """The receiver reads ``own`` = ``"none"`` (question only), ``"half"`` or ``"full"`` context itself;
    ``"full-short"``: the full context after :data:`SHORT_ANSWER_EXAMPLES`."""

    def __init__(self, adapter: Any, own: str = "none", lora: Any = None):
        """lora: a :class:`~lcf.runtime.receiver_lora.ReceiverLoRA` attached to the adapter's receiver (disabled
        outside this system's answers): the receiver tuned to read the text itself (``lcf eval-xc --receiver-lora``)."""
        super().__init__(adapter)
        self.own, self.lora = own, lora
        self.name = {"none": "receiver alone", "half": "receiver + own half", "full": "receiver + full context",
                     "full-short": "receiver + full context, short-answer examples"}[own] + (" (LoRA)" if lora else "")

    def answer(self, items, max_new_tokens, min_new_tokens=0):
        if self.lora is None:
            return super().answer(items, max_new_tokens, min_new_tokens)
        self.lora.enabled = True
        try:
            return super().answer(items, max_new_tokens, min_new_tokens)
        finally:
            self.lora.enabled = False

    def prepare(self, items):
        if self.own == "none":
            return [""] * len(items), None, [0] * len(items)
        if self.own == "half":
            return [it.receiver_context for it in items], None, [0] * len(items)
        both = [full_context(it) for it in items]
        if self.own == "full-short":
            both = [f"{SHORT_ANSWER_EXAMPLES}\n\nText: {b}" for b in both]
        return both, None, [0] * len(items)


class TextMessage(XCSystem):
    """The sharer writes at most ``tokens`` tokens about its context; the receiver reads them."""

    def __init__(self, adapter: Any, tokens: int, request: str = SUMMARY_REQUEST, exact: bool = False):
        """exact: force messages of exactly ``tokens`` tokens (timing at a fixed message length)."""
        super().__init__(adapter)
        self.exact = exact
        if adapter.sharer is None:
            raise LCFError("the text baseline needs the sharer (load the adapter with its sharer)")
        self.tokens, self.request, self.name = tokens, request, f"text-{tokens}"
        self.writer = PlainModel(adapter.sharer, template=adapter.config.get("templates", {}).get("sharer", "auto"))
        self.messages: list[str] = []

    def prepare(self, items):
        msgs = self.writer.generate([self.request.format(context=it.sharer_context) for it in items], self.tokens,
                                    batch_size=len(items), min_new_tokens=self.tokens if self.exact else 0)
        self.messages += msgs
        own = ["\n\n".join(p for p in (it.receiver_context, m) if p) for it, m in zip(items, msgs)]
        return own, None, [len(m.encode()) for m in msgs]


class LatentXC(XCSystem):
    """LCF-X: each item's summary is serialised as a latent message, parsed back and fused.

    control: ``"none"``, ``"zero"`` (all-zero summary) or ``"mismatched"`` (the summary of another
    item of the batch, :func:`~lcf.eval.systems.mismatch_partner`). quantize: ``"none"`` / ``"int8"`` / ``"int4"``."""

    def __init__(self, adapter: Any, control: str = "none", quantize: str = "none", spans: str | None = None):
        super().__init__(adapter)
        self.spans = spans  # None: the scheme the compressor was trained with
        if not adapter.is_xc:
            raise LCFError("LCF-X evaluation needs a cross-context adapter (exported with a compressor)")
        self.control, self.quantize = control, quantize
        self.partner_context: dict[str, str] = {}  # item id -> the context the mismatched control reads
        suffix = "" if quantize == "none" else f" {quantize}"
        self.name = "lcf-x" + suffix + ("" if control == "none" else f" ({control})") + (f" [{spans} spans]" if spans else "")

    def set_items(self, items: Sequence[Any]) -> None:
        """Pair every item with another item of the whole evaluation (not only of its batch)."""
        contexts = [it.sharer_context for it in items]
        self.partner_context = {it.id: contexts[mismatch_partner(contexts, i)] for i, it in enumerate(items)}

    def prepare(self, items):
        a = self.adapter
        contexts = [it.sharer_context for it in items]
        if self.control == "mismatched":
            if any(it.id not in self.partner_context for it in items):
                self.set_items(items)
            contexts = [self.partner_context[it.id] for it in items]
        view = a.summarise(contexts, spans=self.spans)
        header = a.expected_header() | {"summary_len": view.seq_len}
        views, sent = [], []
        for row in range(len(items)):
            data = LatentMessage.from_view(view, a.compressor.sharer_layers, header, row).to_bytes(self.quantize)
            sent.append(len(data))
            views.append(a.read_message(data).to_view(a.compressor.shapes.sharer, device=a._device()))
        from lcf.models.kv import cat_views

        out = cat_views(views)
        if self.control == "zero":
            out.keys, out.values = [torch.zeros_like(k) for k in out.keys], [torch.zeros_like(v) for v in out.values]
        return [it.receiver_context for it in items], out, sent


class TokenXC(LatentXC):
    """A per-token adapter's message (:mod:`lcf.runtime.token_adapter`): sent as bytes, parsed back and read
    in place of the context. Controls: ``"zero"``, all-zero K/V at the context's positions (the message's
    length, nothing of its content); ``"mean"``, an all-zero code, which decodes to the map's mean K/V;
    ``"mismatched"``, another item's message."""

    NAMES = {"none": "", "zero": " (zero K/V)", "mean": " (zero code: the map's mean K/V)"}

    def __init__(self, adapter: Any, control: str = "none", quantize: str = "none", spans: str | None = None):
        if spans is not None:
            raise LCFError("a per-token adapter sends one code per context token, not spans; drop --spans")
        super().__init__(adapter, control=control, quantize=quantize)
        suffix = "" if quantize == "none" else f" {quantize}"
        self.name = "per-token message" + suffix + self.NAMES.get(control, f" ({control})")
        if control == "zero":  # the same adapter whose decoder gives all-zero rows
            self.adapter = dataclasses.replace(adapter, map=ZeroRows(adapter.map))

    @torch.no_grad()
    def answer(self, items: Sequence[Any], max_new_tokens: int, min_new_tokens: int = 0) -> tuple[list[str], list[int]]:
        a = self.adapter
        if self.control == "mismatched" and any(it.id not in self.partner_context for it in items):
            self.set_items(items)
        data = []
        for it in items:
            msg = a.send(self.partner_context[it.id] if self.control == "mismatched" else it.sharer_context)
            if self.control == "mean":
                msg.codes = torch.zeros_like(msg.codes)
            data.append(msg.to_bytes(self.quantize))
        texts = a.receive(data, [it.question for it in items], own_context=[it.receiver_context for it in items],
                          max_new_tokens=max_new_tokens)
        return texts, [len(d) for d in data]


class ZeroRows(LowRank):
    """A per-token map whose decoder returns all-zero receiver rows (the zero-K/V control)."""

    def __init__(self, low: LowRank):
        super().__init__(low.down.detach(), low.up.detach(), low.x_mean, low.x_std, low.y_mean)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return torch.zeros(code.shape[0], self.up.shape[1], dtype=self.up.dtype, device=code.device)


def build_xc_systems(adapter: Any, chosen: Sequence[str], *, text_tokens: Sequence[int] = (50, 100, 200),
                     has_own: bool = True, spans: str | None = None, receiver_lora: Any = None) -> list[XCSystem]:
    """The systems of ``chosen`` (:data:`XC_SYSTEMS`) in report order; ``spans`` cuts the sharer's
    context for every LCF-X system (default: the scheme the compressor was trained with). ``receiver_lora``
    (attached to the adapter's receiver, disabled): every system in which the receiver reads text itself
    (``receiver``, ``own``, ``full``, ``full-short``) is followed by its twin with this LoRA on."""
    unknown = sorted(set(chosen) - set(XC_SYSTEMS))
    if unknown:
        raise LCFError(f"unknown cross-context systems {unknown}; choose from {', '.join(XC_SYSTEMS)}")
    latent = LATENT_SYSTEMS[adapter.kind]  # how this kind of adapter's message travels (lcf.runtime.kinds)
    out: list[XCSystem] = []
    for kind in XC_SYSTEMS:
        if kind not in chosen:
            continue
        if kind in OWN_READING:
            if kind != "own" or has_own:
                loras = (None,) if receiver_lora is None else (None, receiver_lora)
                out += [ReceiverOnly(adapter, OWN_READING[kind], lora) for lora in loras]
        elif kind == "text":
            out += [TextMessage(adapter, n) for n in text_tokens]
        elif kind == "lcf-x":
            out.append(latent(adapter, spans=spans))
        elif kind in ("int8", "int4"):
            out.append(latent(adapter, quantize=kind, spans=spans))
        elif kind in ("zero", "mismatched"):
            out.append(latent(adapter, control=kind, spans=spans))
        elif kind == "mean" and latent is TokenXC:  # an all-zero code: per-token adapters only (like "own", skipped
            out.append(TokenXC(adapter, control="mean"))  # where it does not apply)
    return out


#: system choice -> what the receiver reads itself (:class:`ReceiverOnly`)
OWN_READING: dict[str, str] = {"receiver": "none", "own": "half", "full": "full", "full-short": "full-short"}

#: adapter kind -> the system that sends its latent message (summary or per-token codes)
LATENT_SYSTEMS: dict[str, type[LatentXC]] = {FUSED: LatentXC, PER_TOKEN: TokenXC}


def evaluate_xc(systems: Sequence[XCSystem], items: Sequence[Any], *, max_new_tokens: int = 16, batch_size: int = 8,
                latency_runs: int = 3, seed: int = 0, on_batch: Callable[[str, int], None] | None = None) -> dict:
    """EM / F1 / TTFT / bytes per system on ``items`` (JSON-safe dict: ``scores``, ``predictions``)."""
    if not items:
        raise LCFError("cross-context evaluation needs at least one item")
    results: dict[str, Any] = {"n": len(items), "item_ids": [it.id for it in items], "scores": {}, "predictions": {}}
    golds = [it.answers for it in items]
    for system in systems:
        torch.manual_seed(seed)
        texts, sent = [], []
        if isinstance(system, TextMessage):
            system.messages = []
        if isinstance(system, LatentXC) and system.control == "mismatched":
            system.set_items(items)
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            t, s = system.answer(chunk, max_new_tokens)
            texts += t
            sent += s
            if on_batch:
                on_batch(system.name, len(chunk))
        preds = [first_line(t) for t in texts]
        messages = list(system.messages) if isinstance(system, TextMessage) else [None] * len(items)
        scores = squad_scores(preds, golds) | {"bytes_sent": statistics.mean(sent)}
        # batch-1 time to first token (the mismatched control needs a second item and costs what lcf-x costs)
        if latency_runs > 0 and getattr(system, "control", "none") != "mismatched":
            one = list(items[:1])
            system.answer(one, 1)  # warm-up
            runs = [elapsed_ms(lambda: system.answer(one, 1), system.adapter._device()) for _ in range(latency_runs)]
            scores["ttft_ms"] = statistics.median(runs)
        results["scores"][system.name] = scores
        scores["contains"] = contains_rate(texts, golds)
        if any(it.distractors for it in items):  # binding: how often the answer is another person's value
            scores["other"] = contains_rate(texts, [it.distractors or [""] for it in items])
        results["predictions"][system.name] = [
            {"id": it.id, "pred": p, "text": t, "gold": it.answers} | ({"message": m} if m is not None else {})
            for it, p, t, m in zip(items, preds, texts, messages)]
    return results


def contains_rate(texts: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """Fraction of answers whose whole text contains a gold answer (SQuAD-normalised): lenient with
    systems that answer in a sentence, which EM and F1 on the first line penalise."""
    from lcf.eval.metrics import normalize_answer

    hits = [any(normalize_answer(g) and f" {normalize_answer(g)} " in f" {normalize_answer(t)} " for g in gold)
            for t, gold in zip(texts, golds)]
    return sum(hits) / max(len(hits), 1)


def format_xc_table(results: dict) -> str:
    other = any("other" in s for s in results["scores"].values())
    lines = ["| system | EM | F1 | contains |" + (" other |" if other else "") + " TTFT ms | bytes sent |",
             "|---|---:|---:|---:|" + ("---:|" if other else "") + "---:|---:|"]
    for name, s in results["scores"].items():
        ttft = f"{s['ttft_ms']:.1f}" if "ttft_ms" in s else "-"
        cell = f" {100 * s['other']:.1f} |" if other and "other" in s else (" - |" if other else "")
        lines.append(f"| {name} | {100 * s['em']:.1f} | {100 * s['f1']:.1f} | {100 * s['contains']:.1f} |{cell} {ttft} | "
                     f"{s['bytes_sent']:.0f} |")
    return "\n".join(lines)


def ids_in_results(paths: Sequence[str | Path]) -> set[str]:
    """The item ids that cross-context reports (``results.json`` of ``lcf eval-xc`` or the kv_translate experiment) scored."""
    import json

    ids: set[str] = set()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise LCFError(f"{path} does not exist; --exclude / --only take results.json files of earlier evaluations")
        got = json.loads(path.read_text()).get("item_ids")
        if not isinstance(got, list):
            raise LCFError(f"{path} has no 'item_ids' list; expected the results.json of lcf eval-xc or kv_translate")
        ids |= {str(i) for i in got}
    return ids


def held_out_items(adapter: Any, data: dict | None = None, *, limit: int | None = None, seed: int = 0,
                   data_root: str | None = None, exclude: Sequence[str | Path] = (),
                   only: Sequence[str | Path] = ()) -> tuple[list[Any], dict[str, Any]]:
    """Held-out cross-context items: the validation split of ``data`` (a dataset spec ``{type, ...}``;
    default: the data the adapter was trained on), minus contexts too long for the sharer and items that
    the reports in ``exclude`` scored, then a seeded sample of ``limit``. Returns (items, facts about the
    selection). ``only``: exactly the items those reports scored (the same items as an earlier evaluation)."""
    import random

    from lcf.data.xc.features import XCError, sharer_features
    from lcf.registry import datasets

    spec = dict(data or (adapter.config.get("training") or {}).get("data") or {})
    if not spec.get("type"):
        raise LCFError("no dataset to evaluate on: the adapter's config records no training data; pass one, e.g. "
                       "--data type=fact_transfer")
    if data_root:
        spec["data_root"] = data_root
    dataset = datasets.build(spec, "data")
    if not hasattr(dataset, "split_examples"):
        raise LCFError(f"data.type={spec['type']!r} is not a cross-context dataset (fact_transfer, squad_xc, "
                       f"hotpotqa_xc, musique_xc)")
    _, val = dataset.split_examples()
    gone = ids_in_results(exclude)
    val = [it for it in val if str(it.id) not in gone]
    if only:
        wanted = ids_in_results(only)
        val = [it for it in val if str(it.id) in wanted]
        if len(val) < len(wanted):
            raise LCFError(f"--only: {len(wanted) - len(val)} of the {len(wanted)} items of {', '.join(map(str, only))} "
                           f"are not in the validation split of this --data (or were excluded); pass the --data those "
                           f"reports used")
    limit_tokens = min(adapter.max_context_tokens(), getattr(dataset, "max_context_tokens", 1 << 30))
    template = adapter.config.get("templates", {}).get("sharer", "auto")
    kept = []
    for it in val:
        try:
            sharer_features(adapter.sharer.tokenizer, it.sharer_context, template=template, max_tokens=limit_tokens)
        except XCError:
            continue
        kept.append(it)
    if not kept:
        raise LCFError(f"none of the {len(val)} held-out examples of {spec['type']} fits the sharer "
                       f"({limit_tokens} tokens)")
    if limit is not None and limit < len(kept):
        keep = sorted(random.Random(seed).sample(range(len(kept)), limit))
        kept = [kept[i] for i in keep]
    facts = {"data": spec, "held_out": len(val), "fit": len(kept) if limit is None else None, "evaluated": len(kept),
             "max_context_tokens": limit_tokens, "has_own_context": any(it.receiver_context for it in kept)}
    if exclude:
        facts["excluded"] = {"reports": [Path(p).name for p in exclude], "items": len(gone)}
    if only:
        facts["only"] = {"reports": [Path(p).name for p in only], "items": len(kept)}
    return kept, facts
