"""Cross-context versions of QA benchmarks: the sharer reads the passages, the receiver the question.

``squad_xc``     SQuAD v1.1 (HF ``rajpurkar/squad`` schema): the sharer reads ``context``; train and
                 validation are split BY ARTICLE (``title``), so no validation context is trained on.
``hotpotqa_xc``  HotpotQA distractor (official JSON or HF ``hotpotqa/hotpot_qa``/``distractor``): the
                 ``title: text`` paragraphs are split between the models so that each holds one of
                 the two supporting paragraphs; the others are split evenly (the sharer gets the extra
                 one of an odd count) by a generator seeded with ``seed`` and the example id.
                 Paragraph order is preserved on both sides.
``musique_xc``   MuSiQue as shipped with CacheBlend (question, answers, ctxs of title/text): the
                 sharer reads every passage (``title: text`` when there is a title).

Examples whose sharer prompt exceeds ``max_context_tokens`` are dropped (and counted) by
:meth:`~lcf.data.xc.dataset.XCData.prepare`. Note that with the default 480, most HotpotQA halves
(about 650 Gemma-3 tokens on the shared sample) and every MuSiQue example (about 5,700) are too long.
"""
from __future__ import annotations

import math
import random
from typing import Any, Literal

from lcf.data.xc.features import XCExample
from lcf.data.rows import DataError, Row
from lcf.data.xc.dataset import XCData, load_rows, string_list, text_field
from lcf.registry import datasets

__all__ = ["HotpotQAXCData", "MuSiQueXCData", "SQuADXCData", "hotpot_paragraphs"]


class _FileXCData(XCData):
    """A cross-context dataset read from one file under the data root, or from a hub dataset."""

    hub_configs: dict[str, str] = {}

    def _source(self, file: str, hub_id: str | None, hub_config: str | None, hub_split: str) -> None:
        self.file, self.hub_id, self.hub_split = file, hub_id, hub_split
        self.hub_config = hub_config or self.hub_configs.get(hub_id or "")

    def __repr__(self) -> str:
        src = f"hub_id={self.hub_id!r}" if self.hub_id else f"file={self.file!r}, data_root={self.data_root!r}"
        return f"{type(self).__name__}({src}, val_size={self.val_size}, seed={self.seed}, spans={self.spans!r})"

    def read(self) -> list[XCExample]:
        rows = load_rows(self.name, self.file, self.data_root, self.hub_id, self.hub_config, self.hub_split)
        return [self.parse(row, where, i) for i, (where, row) in enumerate(rows)]

    def parse(self, row: Row, where: str, index: int) -> XCExample:
        """One row as an example; ``where`` (file + line) prefixes errors."""
        raise NotImplementedError

    def _id(self, row: Row, index: int, *keys: str) -> str:
        for key in keys:
            if row.get(key) not in (None, ""):
                return str(row[key])
        return f"{self.name}/{index}"


@datasets.register("squad_xc")
class SQuADXCData(_FileXCData):
    """SQuAD v1.1 across contexts: the sharer reads the paragraph, the receiver the question.

    file: JSONL/JSON under ``data_root`` (default the shared dev sample); hub_id / hub_split: read a
    hub dataset with the same schema instead (e.g. ``rajpurkar/squad``; needs ``pip install datasets``).
    Validation takes whole articles (``title``) until it has at least ``val_size`` questions.
    receiver_context: ``none`` (the question only) or ``full`` (the receiver reads the paragraph itself: the
    training data of a receiver tuned to read the text, the format-fair own reading of ``lcf eval-xc``).
    """

    name = "squad_xc"

    def __init__(
        self,
        file: str = "squad/squad_v1.1_dev_sample_dev.jsonl",
        hub_id: str | None = None,
        hub_split: str = "train",
        data_root: str | None = None,
        val_size: int = 100,
        train_size: int | None = None,
        seed: int = 0,
        receiver_template: str = "auto",
        sharer_template: str = "auto",
        spans: Literal["paragraph", "sentence", "tokens"] = "sentence",
        span_tokens: int = 32,
        max_context_tokens: int = 480,
        max_prompt_tokens: int = 1024,
        max_response_tokens: int = 32,
        receiver_context: Literal["none", "full"] = "none",
    ) -> None:
        super().__init__(data_root=data_root, val_size=val_size, train_size=train_size, seed=seed,
                         receiver_template=receiver_template, sharer_template=sharer_template, spans=spans,
                         span_tokens=span_tokens, max_context_tokens=max_context_tokens,
                         max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens,
                         receiver_context=receiver_context)
        self._source(file, hub_id, None, hub_split)
        self._titles: dict[str, str] = {}

    def parse(self, row: Row, where: str, index: int) -> XCExample:
        answers = row.get("answers")
        if isinstance(answers, dict):
            answers = answers.get("text")
        golds = list(dict.fromkeys(a.strip() for a in string_list(answers, "answers['text']", where) if a.strip()))
        if not golds:
            raise DataError(f"{where}: no gold answers in answers['text']; expected at least one non-empty answer")
        context = text_field(row, "context", where)
        ex = XCExample(id=self._id(row, index, "id"), sharer_context=context,
                       question=text_field(row, "question", where), answers=golds, source=where)
        title = row.get("title")
        self._titles[ex.id] = title if isinstance(title, str) and title else f"context:{context}"
        return ex

    def group_of(self, example: XCExample) -> str:
        """The article title (the context itself when a row has no title)."""
        return self._titles.get(example.id, example.id)


def hotpot_paragraphs(row: Row, where: str) -> tuple[list[str], list[str]]:
    """``(titles, paragraphs)`` of a HotpotQA row (official or hub schema); paragraphs are ``title: text``."""
    ctx = row.get("context")
    if isinstance(ctx, dict):  # hub schema: {"title": [...], "sentences": [[...], ...]}
        pairs = list(zip(ctx.get("title") or [], ctx.get("sentences") or []))
    elif isinstance(ctx, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in ctx):
        pairs = [(p[0], p[1]) for p in ctx]  # official schema: [[title, [sentences]], ...]
    else:
        raise DataError(f"{where}: 'context' must be a list of [title, [sentences]] pairs (or the hub's "
                        f"{{'title': [...], 'sentences': [...]}}), got {str(ctx)[:80]!r}")
    if not pairs:
        raise DataError(f"{where}: 'context' has no paragraphs")
    titles, paragraphs = [], []
    for title, sents in pairs:
        if not isinstance(title, str):
            raise DataError(f"{where}: a paragraph title must be a string, got {title!r}")
        text = "".join(string_list(sents, f"the sentences of paragraph {title!r}", where)).strip()
        titles.append(title)
        paragraphs.append(f"{title}: {text}")
    return titles, paragraphs


def _supporting_titles(row: Row, where: str) -> list[str]:
    facts = row.get("supporting_facts")
    if isinstance(facts, dict):  # hub schema: {"title": [...], "sent_id": [...]}
        titles = facts.get("title")
    elif isinstance(facts, list) and all(isinstance(f, (list, tuple)) and f for f in facts):
        titles = [f[0] for f in facts]
    else:
        raise DataError(f"{where}: 'supporting_facts' must be a list of [title, sentence_id] pairs, got "
                        f"{str(facts)[:80]!r}")
    return list(dict.fromkeys(string_list(titles, "the supporting fact titles", where)))


@datasets.register("hotpotqa_xc")
class HotpotQAXCData(_FileXCData):
    """HotpotQA distractor across contexts: each model holds one supporting paragraph.

    file: the official JSON under ``data_root`` (default the shared first-100 dev sample); hub_id /
    hub_config / hub_split: a hub dataset (``hotpotqa/hotpot_qa``, config ``distractor``).
    receiver_context: ``none`` (the receiver reads only the question) or ``half`` (it also reads its
    half of the paragraphs, holding the other supporting paragraph); ``full``: the receiver reads the sharer's
    paragraphs itself (the split of ``none``).
    distractors: ``False`` keeps only the two supporting paragraphs, one per side (short enough for
    per-token messages under Gemma-3's 512-token sliding window); which side holds which is unchanged.
    """

    name = "hotpotqa_xc"
    supports_half = True
    hub_configs = {"hotpotqa/hotpot_qa": "distractor", "hotpot_qa": "distractor"}

    def __init__(
        self,
        file: str = "hotpotqa/hotpot_dev_distractor_v1.first100.json",
        hub_id: str | None = None,
        hub_config: str | None = None,
        hub_split: str = "train",
        data_root: str | None = None,
        val_size: int = 20,
        train_size: int | None = None,
        seed: int = 0,
        receiver_context: Literal["none", "half", "full"] = "none",
        distractors: bool = True,
        receiver_template: str = "auto",
        sharer_template: str = "auto",
        spans: Literal["paragraph", "sentence", "tokens"] = "paragraph",
        span_tokens: int = 32,
        max_context_tokens: int = 480,
        max_prompt_tokens: int = 1024,
        max_response_tokens: int = 32,
    ) -> None:
        super().__init__(data_root=data_root, val_size=val_size, train_size=train_size, seed=seed,
                         receiver_template=receiver_template, sharer_template=sharer_template, spans=spans,
                         span_tokens=span_tokens, max_context_tokens=max_context_tokens,
                         max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens,
                         receiver_context=receiver_context)
        self._source(file, hub_id, hub_config, hub_split)
        self.distractors = distractors

    def split_paragraphs(self, row: Row, where: str, id: str) -> tuple[list[int], list[int]]:
        """``(sharer_indices, receiver_indices)`` of the row's paragraphs, each side holding one supporting one."""
        titles, _ = hotpot_paragraphs(row, where)
        support = _supporting_titles(row, where)
        missing = [t for t in support if t not in titles]
        if missing or len(support) != 2:
            raise DataError(
                f"{where}: expected 2 supporting paragraphs whose titles are among the context titles, got supporting "
                f"titles {support}" + (f" ({missing} not in the context)" if missing else "") +
                "; hotpotqa_xc needs the distractor setting (2 supporting paragraphs per question)"
            )
        rng = random.Random(f"hotpotqa_xc/{self.seed}/{id}")
        s_sup, r_sup = rng.sample([titles.index(t) for t in support], 2)
        if not self.distractors:
            return [s_sup], [r_sup]
        others = [i for i in range(len(titles)) if i not in (s_sup, r_sup)]
        rng.shuffle(others)
        k = math.ceil(len(titles) / 2) - 1
        sharer = sorted([s_sup, *others[:k]])
        return sharer, sorted(set(range(len(titles))) - set(sharer))

    def parse(self, row: Row, where: str, index: int) -> XCExample:
        id = self._id(row, index, "_id", "id")
        _, paragraphs = hotpot_paragraphs(row, where)
        sharer, receiver = self.split_paragraphs(row, where, id)
        answer = text_field(row, "answer", where)
        mine = "\n\n".join(paragraphs[i] for i in receiver) if self.receiver_context == "half" else ""
        return XCExample(id=id, sharer_context="\n\n".join(paragraphs[i] for i in sharer),
                         question=text_field(row, "question", where), answers=[answer], receiver_context=mine,
                         source=where)


@datasets.register("musique_xc")
class MuSiQueXCData(_FileXCData):
    """MuSiQue (CacheBlend's ``musique_s.json``: question, answers, ctxs of title/text) across contexts.

    The sharer reads all passages joined by blank lines; contexts over ``max_context_tokens`` are
    dropped (counted). file: under ``data_root``.
    """

    name = "musique_xc"

    def __init__(
        self,
        file: str = "musique_cacheblend/musique_s.json",
        data_root: str | None = None,
        val_size: int = 30,
        train_size: int | None = None,
        seed: int = 0,
        receiver_template: str = "auto",
        sharer_template: str = "auto",
        spans: Literal["paragraph", "sentence", "tokens"] = "paragraph",
        span_tokens: int = 32,
        max_context_tokens: int = 480,
        max_prompt_tokens: int = 1024,
        max_response_tokens: int = 32,
        receiver_context: Literal["none", "full"] = "none",
    ) -> None:
        super().__init__(data_root=data_root, val_size=val_size, train_size=train_size, seed=seed,
                         receiver_template=receiver_template, sharer_template=sharer_template, spans=spans,
                         span_tokens=span_tokens, max_context_tokens=max_context_tokens,
                         max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens,
                         receiver_context=receiver_context)
        self._source(file, None, None, "train")

    def parse(self, row: Row, where: str, index: int) -> XCExample:
        ctxs: Any = row.get("ctxs")
        if not isinstance(ctxs, list) or not ctxs or not all(isinstance(c, dict) for c in ctxs):
            raise DataError(f"{where}: 'ctxs' must be a non-empty list of {{'title', 'text'}} passages, got "
                            f"{str(ctxs)[:80]!r}")
        passages = []
        for k, c in enumerate(ctxs):
            text = text_field(c, "text", f"{where} ctxs[{k}]").strip()
            title = c.get("title") or ""
            if not isinstance(title, str):
                raise DataError(f"{where} ctxs[{k}]: 'title' must be a string, got {title!r}")
            passages.append(f"{title.strip()}: {text}" if title.strip() else text)
        golds = string_list(row.get("answers", row.get("answer")), "'answers'", where)
        answers = [a.strip() for a in golds if a.strip()]
        if not answers:
            raise DataError(f"{where}: no gold answers; expected 'answers' as a non-empty list of strings")
        return XCExample(id=self._id(row, index, "id", "_id"), sharer_context="\n\n".join(passages),
                         question=text_field(row, "question", where), answers=answers, source=where)
