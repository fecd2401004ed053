"""``fact_transfer``: synthetic facts about invented people, which the receiver cannot know.

Every example is a small world of ``num_paragraphs`` invented people (names built from syllables).
Each paragraph is about one person and has 1–2 sentences: the first states the *asked attribute*
(the same attribute in every paragraph, each person with a different value, so the answer depends on
binding the name to its value, not on spotting the only city), the second, for about half the
paragraphs, one other attribute. One paragraph is the *answer paragraph*; the question asks its
person's asked attribute; the answer is the short value::

    context:  Ravel Doskin lives in Lisbon. Ravel Doskin's locker number is 417.

              Moran Talkin lives in Osaka.

              Kalin Brecford lives in Quito. Kalin Brecford has a pet owl.
    question: Which city does Ravel Doskin live in?
    answer:   Lisbon

Attributes (closed vocabularies; ``attributes`` picks a subset): ``city`` (16 cities), ``colour``
(12), ``pet`` (12), ``locker`` (a 2–3 digit number), ``code_word`` (an invented word).

``values: open`` draws every value from large open pools (real and invented cities, colours, animals,
jobs, numbers, invented code words; see :mod:`lcf.data.fact_pools`) split into disjoint training and
validation parts, so a validation answer was never seen in training: only a message that carries
the information in the context can pass. ``phrasing: varied`` states and asks each fact in one of
several phrasings and shuffles the sentences of a paragraph. ``num_paragraphs: [lo, hi]`` draws the
number of people of each world (a curriculum from one person to many).

Guarantees: the answer string occurs in the answer paragraph only (never in another paragraph nor in
the question, case-insensitively); training and validation use disjoint first names AND disjoint
last names (split from the syllable pools by ``seed``), so no validation person was seen in
training; the same options give the same data.

``receiver_context="none"``: the sharer reads every paragraph, the receiver only the question.
``receiver_context="half"``: the receiver reads ``num_paragraphs // 2`` distractor paragraphs of
its own; the sharer reads the rest, always including the answer paragraph. The receiver's own half
holds the same attribute for other people, so it is plausible-looking but never the answer: the
receiver must take the answer from the sharer and not echo its own context.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from itertools import product
from typing import Literal

from lcf.data.xc.features import XCExample
from lcf.data.fact_pools import OPEN_ATTRIBUTES, PHRASINGS, open_value, value_split
from lcf.data.rows import DataError
from lcf.data.xc.dataset import XCData
from lcf.errors import suggest
from lcf.registry import datasets

__all__ = ["ATTRIBUTES", "FactTransferData"]

CITIES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Dublin", "Cairo", "Quito", "Hanoi", "Zagreb", "Perth",
          "Denver", "Tunis", "Bergen", "Porto", "Seoul")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "grey", "silver", "teal", "violet")
PETS = ("cat", "dog", "parrot", "rabbit", "hamster", "turtle", "goldfish", "ferret", "lizard", "owl", "pony", "goat")
_FIRST_A = ("Ra", "Ve", "Mo", "Ta", "Li", "Ka", "So", "Ne", "Da", "Jo", "Fe", "Ma", "Be", "Lu", "Ri", "Ze", "Ha",
            "Pe", "Ni", "Co")
_FIRST_B = ("vel", "ran", "lin", "ric", "dan", "mir", "sel", "ton", "bel", "nor", "vin", "rak", "lo", "na", "ris")
_LAST_A = ("Dos", "Mar", "Kel", "Bran", "Vos", "Tal", "Gor", "Hal", "Pel", "Stan", "Wen", "Fal", "Rod", "Lind", "Cor",
           "Brec")
_LAST_MID = ("", "en", "ar", "il", "o")
_LAST_B = ("kin", "ter", "ley", "man", "sen", "dor", "wick", "holm", "ard", "ing", "ford", "by")
_CODE = ("zu", "quo", "fex", "tam", "pli", "dro", "vek", "mun", "sor", "gli", "bax", "tor", "wen", "kri", "yol", "nep")


@dataclass(frozen=True)
class Attribute:
    """How one attribute is stated and asked about."""

    statement: str  # "{name} lives in {value}."
    question: str  # "Which city does {name} live in?"
    vocabulary: tuple[str, ...] = ()  # closed vocabulary; empty: generated (see _value)


ATTRIBUTES: dict[str, Attribute] = {
    "city": Attribute("{name} lives in {value}.", "Which city does {name} live in?", CITIES),
    "colour": Attribute("{name}'s favourite colour is {value}.", "What is {name}'s favourite colour?", COLOURS),
    "pet": Attribute("{name} has a pet {value}.", "What kind of pet does {name} have?", PETS),
    "locker": Attribute("{name}'s locker number is {value}.", "What is {name}'s locker number?"),
    "code_word": Attribute("{name}'s code word is {value}.", "What is {name}'s code word?"),
}


def _value(attribute: str, rng: random.Random) -> str:
    """A random value of ``attribute``."""
    vocab = ATTRIBUTES[attribute].vocabulary
    if vocab:
        return rng.choice(vocab)
    if attribute == "locker":
        return str(rng.randint(10, 999))
    return "".join(rng.choice(_CODE) for _ in range(rng.choice((2, 3))))


def name_pools(seed: int) -> dict[str, tuple[list[str], list[str]]]:
    """``{"train": (first_names, last_names), "val": (...)}``: disjoint first and last names.

    A quarter of each pool (chosen by ``seed``) is reserved for validation.
    """
    firsts = sorted({a + b for a, b in product(_FIRST_A, _FIRST_B)})
    lasts = sorted({a + m + b for a, m, b in product(_LAST_A, _LAST_MID, _LAST_B)})
    rng = random.Random(f"fact_transfer/names/{seed}")
    rng.shuffle(firsts)
    rng.shuffle(lasts)
    nf, nl = len(firsts) // 4, len(lasts) // 4
    return {"val": (firsts[:nf], lasts[:nl]), "train": (firsts[nf:], lasts[nl:])}


#: the receiver's question of a repeat (autoencoding) example
REPEAT_QUESTION = "Repeat the message you were sent, word for word."


@datasets.register("fact_transfer")
class FactTransferData(XCData):
    """Synthetic cross-context facts (see the module docstring); needs no data files.

    num_train, num_val: examples generated for training / validation (disjoint people).
    num_paragraphs: paragraphs (people) per context, or ``[lo, hi]``: drawn per example.
    values: ``closed`` (the small lists) or ``open`` (open pools, validation values unseen in training).
    phrasing: ``fixed`` (one phrasing per attribute) or ``varied``.
    attributes: the attributes questions may ask (default: all of ``city``, ``colour``, ``pet``,
        ``locker``, ``code_word``).
    receiver_context: ``none`` (question only), ``half`` (the receiver also reads distractors) or ``full`` (the
        receiver reads the sharer's context itself).
    repeat_fraction: this fraction of the *training* examples asks the receiver to repeat the sharer's
        context word for word instead of answering (:data:`REPEAT_QUESTION`; the answer is the whole
        context): an autoencoding task with every token of the message as a target, so the translator
        learns to carry strings it has not seen, the way In-Context Autoencoders pretrain memory slots
        (Ge et al., arXiv 2307.06945). Validation examples always ask the question. Raise
        ``max_response_tokens`` to fit the context.
    data_root: accepted for uniform recipes; unused.
    Other options as in :class:`~lcf.data.xc.dataset.XCData` (``val_size``/``train_size`` are
    ``num_val``/``num_train`` here).
    """

    name = "fact_transfer"
    supports_half = True

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 100,
        num_paragraphs: int | list[int] = 3,
        attributes: list[str] | None = None,
        seed: int = 0,
        values: Literal["closed", "open"] = "closed",
        phrasing: Literal["fixed", "varied"] = "fixed",
        receiver_context: Literal["none", "half", "full"] = "none",
        receiver_template: str = "auto",
        sharer_template: str = "auto",
        spans: Literal["paragraph", "sentence", "tokens"] = "paragraph",
        span_tokens: int = 32,
        max_context_tokens: int = 480,
        max_prompt_tokens: int = 1024,
        max_response_tokens: int = 32,
        data_root: str | None = None,
        repeat_fraction: float = 0.0,
    ) -> None:
        if isinstance(repeat_fraction, bool) or not isinstance(repeat_fraction, (int, float)) \
                or not 0 <= repeat_fraction <= 1:
            raise DataError(f"fact_transfer: repeat_fraction must be a fraction in [0, 1], got {repeat_fraction!r}")
        people = list(num_paragraphs) if isinstance(num_paragraphs, (list, tuple)) else [num_paragraphs] * 2
        if len(people) != 2 or people[0] > people[1]:
            raise DataError(f"fact_transfer: num_paragraphs must be an int or [lo, hi] with lo <= hi, got "
                            f"{num_paragraphs!r}")
        for key, value, low in (("num_train", num_train, 1), ("num_val", num_val, 0),
                                ("num_paragraphs", people[0], 1), ("num_paragraphs", people[1], 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DataError(f"fact_transfer: {key} must be an int >= {low}, got {value!r}")
        for key, value, choices in (("values", values, ("closed", "open")), ("phrasing", phrasing, ("fixed", "varied"))):
            if value not in choices:
                raise DataError(f"fact_transfer: {key} must be one of {', '.join(choices)}, got {value!r}")
        known = tuple(ATTRIBUTES) if values == "closed" else OPEN_ATTRIBUTES
        attrs = list(known) if attributes is None else list(attributes)
        if not attrs:
            raise DataError(f"fact_transfer: attributes is empty; pick at least one of {', '.join(known)}")
        for a in attrs:
            if a not in known:
                raise DataError(f"fact_transfer: unknown attribute {a!r} for values={values}.{suggest(str(a), known)} "
                                f"Known attributes: {', '.join(known)}.")
        for a in attrs if values == "closed" else ():
            vocab = ATTRIBUTES[a].vocabulary
            if vocab and people[1] > len(vocab):
                raise DataError(
                    f"fact_transfer: num_paragraphs={num_paragraphs} people need different values of {a!r}, which has "
                    f"only {len(vocab)}; use num_paragraphs <= {len(vocab)} or drop {a!r} from attributes"
                )
        super().__init__(data_root=data_root, val_size=num_val, train_size=None, seed=seed,
                         receiver_template=receiver_template, sharer_template=sharer_template, spans=spans,
                         span_tokens=span_tokens, max_context_tokens=max_context_tokens,
                         max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens,
                         receiver_context=receiver_context)
        self.num_train, self.num_val, self.num_paragraphs = num_train, num_val, num_paragraphs
        self.people, self.values, self.phrasing = (people[0], people[1]), values, phrasing
        self.attributes = list(dict.fromkeys(attrs))
        self._pools = value_split(seed) if values == "open" else None
        self.repeat_fraction = float(repeat_fraction)

    def __repr__(self) -> str:
        return (f"FactTransferData(num_train={self.num_train}, num_val={self.num_val}, "
                f"num_paragraphs={self.num_paragraphs}, attributes={self.attributes}, seed={self.seed}, "
                f"values={self.values!r}, phrasing={self.phrasing!r}, "
                f"receiver_context={self.receiver_context!r}, spans={self.spans!r})")

    def read(self) -> list[XCExample]:
        """Training examples, then validation examples."""
        return self.generate("train", self.num_train) + self.generate("val", self.num_val)

    def split_examples(self) -> tuple[list[XCExample], list[XCExample]]:
        """``(train_examples, val_examples)``: generated separately from disjoint name pools."""
        every = self.examples()
        return every[:self.num_train], every[self.num_train:]

    def generate(self, split: Literal["train", "val"], n: int) -> list[XCExample]:
        """``n`` examples of ``split`` (independent of the other split's size)."""
        firsts, lasts = name_pools(self.seed)[split]
        rng = random.Random(f"fact_transfer/{self.seed}/{split}")
        return [self._example(rng, firsts, lasts, f"fact_transfer/{split}/{i}", f"fact_transfer:{split}", split)
                for i in range(n)]

    def _statement(self, attribute: str, rng: random.Random, question: bool = False) -> str:
        if self.values == "closed" and self.phrasing == "fixed":
            return ATTRIBUTES[attribute].question if question else ATTRIBUTES[attribute].statement
        options = PHRASINGS[attribute][1 if question else 0]
        return rng.choice(options) if self.phrasing == "varied" else options[0]

    def _draw(self, attribute: str, split: str, rng: random.Random) -> str:
        if self._pools is None:
            return _value(attribute, rng)
        return open_value(attribute, split, self._pools, self.seed, rng)

    def _example(self, rng: random.Random, firsts: list[str], lasts: list[str], id: str, source: str,
                 split: str = "train") -> XCExample:
        n = self.num_paragraphs if isinstance(self.num_paragraphs, int) else rng.randint(*self.people)
        all_attrs = list(ATTRIBUTES) if self.values == "closed" else list(OPEN_ATTRIBUTES)
        while True:  # resample the rare worlds where the answer string also occurs elsewhere
            names = [f"{f} {l}" for f, l in zip(rng.sample(firsts, n), rng.sample(lasts, n))]
            asked = rng.choice(self.attributes)
            values = self._distinct_values(asked, n, rng, lambda: self._draw(asked, split, rng))
            paragraphs = []
            for name, value in zip(names, values):
                sentences = [self._statement(asked, rng).format(name=name, value=value)]
                others = [a for a in all_attrs if a != asked]
                if rng.random() < 0.5:
                    extra = rng.choice(others)
                    sentences.append(self._statement(extra, rng).format(name=name,
                                                                        value=self._draw(extra, split, rng)))
                if self.values == "open":  # "a engineer" -> "an engineer"
                    sentences = [re.sub(r"\ba ([aeiouAEIOU])", r"an \1", x) for x in sentences]
                if self.phrasing == "varied":
                    rng.shuffle(sentences)
                paragraphs.append(" ".join(sentences))
            target = rng.randrange(n)
            question = self._statement(asked, rng, question=True).format(name=names[target])
            answer = values[target]
            others_text = " ".join(p for i, p in enumerate(paragraphs) if i != target) + " " + question
            if answer.lower() in paragraphs[target].lower() and answer.lower() not in others_text.lower():
                break
        sharer_idx = list(range(n))
        receiver_idx: list[int] = []
        if self.receiver_context == "half":
            distractors = [i for i in range(n) if i != target]
            # a separate generator, so the worlds are the same whichever receiver_context is chosen
            receiver_idx = sorted(random.Random(f"{id}/{self.seed}/half").sample(distractors, n // 2))
            sharer_idx = [i for i in range(n) if i not in receiver_idx]
        context = "\n\n".join(paragraphs[i] for i in sharer_idx)
        # a separate generator again: the same worlds whatever the fraction
        if split == "train" and random.Random(f"{id}/{self.seed}/repeat").random() < self.repeat_fraction:
            question, answer = REPEAT_QUESTION, context
        return XCExample(
            id=id, sharer_context=context, question=question, answers=[answer],
            receiver_context="\n\n".join(paragraphs[i] for i in receiver_idx), source=source,
            distractors=[v for i, v in enumerate(values) if i != target],
        )

    def _distinct_values(self, attribute: str, n: int, rng: random.Random, draw) -> list[str]:
        """``n`` different values of ``attribute``, none a substring of another (e.g. locker 41 and 417)."""
        vocab = ATTRIBUTES[attribute].vocabulary if self.values == "closed" else ()
        if vocab:
            return rng.sample(vocab, n)
        out: list[str] = []
        while len(out) < n:
            v = draw()
            if not any(v.lower() in o.lower() or o.lower() in v.lower() for o in out):
                out.append(v)
        return out
