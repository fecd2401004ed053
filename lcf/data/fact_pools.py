"""Open value pools and varied phrasings for ``fact_transfer`` (``values: open``, ``phrasing: varied``).

Every attribute has a pool far larger than the closed lists (real cities, invented towns, colours,
animals, jobs, invented code words, numbers). :func:`value_split` cuts each pool into a training part
and a disjoint validation part (a quarter, chosen by the seed), so validation values are never seen
in training, anywhere in a context. Invented strings are split by a hash of the string, so the split
needs no list of them.
"""
from __future__ import annotations

import random
import zlib
from itertools import product

__all__ = ["OPEN_ATTRIBUTES", "PHRASINGS", "is_val_value", "open_value", "value_split"]

_REAL_CITIES = (
    "Accra", "Adelaide", "Algiers", "Amman", "Ankara", "Antwerp", "Athens", "Austin", "Baku", "Bamako", "Bangkok",
    "Barcelona", "Basel", "Beirut", "Belfast", "Belgrade", "Berlin", "Bilbao", "Bogota", "Bordeaux", "Boston",
    "Bremen", "Brisbane", "Bristol", "Brno", "Budapest", "Busan", "Calgary", "Cardiff", "Chennai", "Chicago",
    "Cologne", "Cordoba", "Cork", "Dakar", "Dallas", "Delhi", "Detroit", "Dhaka", "Dresden", "Durban", "Edinburgh",
    "Florence", "Gdansk", "Geneva", "Genoa", "Glasgow", "Granada", "Graz", "Hamburg", "Havana", "Helsinki",
    "Houston", "Istanbul", "Jakarta", "Kampala", "Karachi", "Kiev", "Kigali", "Krakow", "Kyoto", "Lagos", "Leeds",
    "Leipzig", "Lille", "Lyon", "Madrid", "Malaga", "Manila", "Marseille", "Melbourne", "Memphis", "Milan",
    "Montreal", "Mumbai", "Munich", "Nantes", "Naples", "Nice", "Odessa", "Ottawa", "Palermo", "Paris", "Prague",
    "Riga", "Rome", "Rotterdam", "Salzburg", "Santiago", "Seattle", "Seville", "Sofia", "Stockholm", "Sydney",
    "Taipei", "Tallinn", "Tbilisi", "Tokyo", "Toronto", "Turin", "Valencia", "Vienna", "Vilnius", "Warsaw",
    "Winnipeg", "Zurich",
)
_TOWN_A = ("Bren", "Tol", "Mar", "Kes", "Vor", "Al", "Gund", "Hel", "Ost", "Rim", "Sav", "Quen", "Dur", "Fen", "Lor",
           "Wyn")
_TOWN_B = ("mora", "vik", "burg", "dale", "stad", "port", "ford", "heim", "ora", "ton", "mere", "gate")
_COLOURS = (
    "amber", "azure", "beige", "black", "blue", "bronze", "brown", "burgundy", "charcoal", "coral", "cream",
    "crimson", "cyan", "emerald", "gold", "green", "grey", "indigo", "ivory", "jade", "khaki", "lavender", "lilac",
    "magenta", "maroon", "mauve", "mint", "navy", "ochre", "olive", "orange", "peach", "pink", "plum", "purple",
    "red", "ruby", "saffron", "salmon", "sapphire", "scarlet", "silver", "teal", "turquoise", "violet", "white",
    "yellow",
)
_ANIMALS = (
    "alpaca", "badger", "beaver", "budgie", "canary", "cat", "chameleon", "chicken", "chinchilla", "cockatoo",
    "crab", "cricket", "dog", "donkey", "dove", "duck", "falcon", "ferret", "finch", "frog", "gecko", "gerbil",
    "goat", "goldfish", "goose", "guinea pig", "hamster", "hedgehog", "horse", "iguana", "kitten", "lizard", "llama",
    "macaw", "magpie", "mouse", "newt", "owl", "parrot", "peacock", "pig", "pigeon", "pony", "python", "quail",
    "rabbit", "raccoon", "rat", "raven", "salamander", "scorpion", "sheep", "snail", "squirrel", "stick insect",
    "tarantula", "tortoise", "turkey", "turtle", "weasel",
)
_JOBS = (
    "accountant", "actor", "architect", "astronomer", "baker", "barber", "beekeeper", "biologist", "blacksmith",
    "bookbinder", "brewer", "butcher", "carpenter", "cartographer", "chemist", "chef", "clockmaker", "cobbler",
    "dentist", "detective", "diver", "economist", "editor", "electrician", "engineer", "farmer", "firefighter",
    "florist", "gardener", "geologist", "glassblower", "historian", "illustrator", "jeweller", "journalist",
    "judge", "lawyer", "librarian", "locksmith", "mechanic", "midwife", "miner", "musician", "nurse", "optician",
    "painter", "pharmacist", "photographer", "pilot", "plumber", "poet", "potter", "sailor", "sculptor", "surgeon",
    "tailor", "teacher", "translator", "veterinarian", "violinist", "weaver", "welder", "zoologist",
)
_CODE = ("zu", "quo", "fex", "tam", "pli", "dro", "vek", "mun", "sor", "gli", "bax", "tor", "wen", "kri", "yol", "nep",
         "ska", "rud", "oth", "jav")

#: the attributes of open-value worlds (``values: open``)
OPEN_ATTRIBUTES = ("city", "colour", "pet", "job", "locker", "code_word")

#: statement and question phrasings per attribute (``phrasing: varied`` draws one of each)
PHRASINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "city": (("{name} lives in {value}.", "{name} has made a home in {value}.", "{name}'s home town is {value}.",
              "These days {name} resides in {value}.", "{name} moved to {value} a few years ago."),
             ("Which city does {name} live in?", "Where does {name} live?", "In which town is {name}'s home?",
              "What city is {name} based in?")),
    "colour": (("{name}'s favourite colour is {value}.", "{name} likes the colour {value} best.",
                "Of all colours, {name} prefers {value}.", "{name} always picks {value} as a favourite colour."),
               ("What is {name}'s favourite colour?", "Which colour does {name} like best?",
                "What colour does {name} prefer?")),
    "pet": (("{name} has a pet {value}.", "{name} keeps a {value} as a pet.", "{name} looks after a pet {value}.",
             "At home, {name} has a {value} for a pet."),
            ("What kind of pet does {name} have?", "Which animal does {name} keep as a pet?",
             "What is {name}'s pet?")),
    "job": (("{name} works as a {value}.", "{name} is a {value} by trade.", "By profession, {name} is a {value}.",
             "{name} earns a living as a {value}."),
            ("What is {name}'s job?", "What does {name} do for a living?", "Which profession does {name} have?")),
    "locker": (("{name}'s locker number is {value}.", "{name} uses locker {value}.",
                "The locker assigned to {name} is number {value}."),
               ("What is {name}'s locker number?", "Which locker does {name} use?")),
    "code_word": (("{name}'s code word is {value}.", "{name} uses the code word {value}.",
                   "The secret code word of {name} is {value}."),
                  ("What is {name}'s code word?", "Which code word does {name} use?")),
}


def _hash_val(value: str, seed: int) -> bool:
    """True when an invented ``value`` belongs to the validation quarter (a stable hash, not Python's)."""
    return zlib.crc32(f"{seed}/{value.lower()}".encode()) % 4 == 0


def value_split(seed: int) -> dict[str, dict[str, list[str]]]:
    """``{"train": {attribute: pool}, "val": {...}}`` of the listed pools: a quarter of each (chosen by
    ``seed``) is validation only. Invented towns join the city pool and follow the hash split."""
    towns = sorted(a + b for a, b in product(_TOWN_A, _TOWN_B))
    out: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}}
    for attribute, pool in (("city", _REAL_CITIES), ("colour", _COLOURS), ("pet", _ANIMALS), ("job", _JOBS)):
        items = sorted(pool)
        random.Random(f"fact_transfer/values/{attribute}/{seed}").shuffle(items)
        n = len(items) // 4
        out["val"][attribute], out["train"][attribute] = items[:n], items[n:]
    for t in towns:
        out["val" if _hash_val(t, seed) else "train"]["city"].append(t)
    return out


def is_val_value(attribute: str, value: str, seed: int) -> bool:
    """Whether ``value`` of ``attribute`` belongs to the validation part (for checks and tests)."""
    if attribute in ("locker", "code_word"):
        return _hash_val(value, seed)
    return value in value_split(seed)["val"][attribute]


def open_value(attribute: str, split: str, pools: dict[str, dict[str, list[str]]], seed: int,
               rng: random.Random) -> str:
    """A random value of ``attribute`` from the ``split`` part of the open pools."""
    if attribute in pools[split]:
        return rng.choice(pools[split][attribute])
    want_val = split == "val"
    while True:  # numbers and invented code words: draw until the hash puts it on the right side
        if attribute == "locker":
            value = str(rng.randint(100, 9999))
        else:
            value = "".join(rng.choice(_CODE) for _ in range(rng.choice((2, 3))))
        if _hash_val(value, seed) == want_val:
            return value
