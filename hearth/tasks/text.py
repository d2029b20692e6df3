"""Text for the language-model tasks: a generated English-like corpus (no download, no operator file needed),
and splitting an operator's text file into the shards a coordinator serves.

The generator is a small probabilistic grammar: noun phrases with determiners and adjectives, subject-verb
agreement, tenses, prepositional phrases and subordinate clauses, grouped into paragraphs. A byte-level model
has to learn spelling, then agreement and word order, so its loss keeps falling for a while; two lexicons
(`GENERAL`, `KITCHEN`) share the syntax, which is what the transfer-learning task transfers.
"""

import random
from dataclasses import dataclass
from pathlib import Path

HELD_OUT_NAME = "heldout"


@dataclass(frozen=True)
class Lexicon:
    nouns: tuple[str, ...]  # singular; plurals by rule (plural())
    adjectives: tuple[str, ...]
    verbs: tuple[str, ...]  # transitive, base form; 3rd person and past by rule
    places: tuple[str, ...]
    times: tuple[str, ...]


GENERAL = Lexicon(
    nouns=("fox", "dog", "child", "farmer", "river", "bird", "teacher", "king", "horse", "sailor", "village",
           "garden", "letter", "window", "stone", "friend", "doctor", "wolf", "tree", "boat"),
    adjectives=("quick", "lazy", "old", "young", "small", "bright", "quiet", "brave", "tired", "clever", "green",
                "cold", "happy", "strange", "gentle"),
    verbs=("watch", "follow", "help", "carry", "find", "call", "visit", "paint", "push", "answer", "remember",
           "miss", "greet", "chase", "open"),
    places=("near the mill", "by the river", "in the forest", "under the bridge", "on the hill", "at the market",
            "behind the barn", "across the field"),
    times=("at dawn", "in the evening", "every morning", "after the storm", "before winter", "at noon"),
)  # fmt: skip

KITCHEN = Lexicon(
    nouns=("cook", "knife", "onion", "pan", "baker", "spoon", "lemon", "oven", "waiter", "bowl", "carrot", "plate",
           "guest", "kettle", "tomato", "chef", "dish", "table", "jar", "loaf"),
    adjectives=("hot", "sharp", "fresh", "sour", "sweet", "heavy", "clean", "busy", "crisp", "golden", "salty",
                "warm", "empty", "ripe", "thin"),
    verbs=("wash", "slice", "stir", "taste", "boil", "serve", "peel", "bake", "fill", "heat", "season", "pour",
           "roast", "dry", "crush"),
    places=("in the kitchen", "on the stove", "by the sink", "at the counter", "in the pantry", "near the oven",
            "on the shelf", "at the back door"),
    times=("before lunch", "at supper", "every night", "after the rush", "on sundays", "at eight"),
)  # fmt: skip

LEXICONS = {"general": GENERAL, "kitchen": KITCHEN}
SUBORDINATORS = ("because", "while", "although", "until", "when")


def plural(noun: str) -> str:
    irregular = {"child": "children", "wolf": "wolves", "knife": "knives", "loaf": "loaves", "chef": "chefs"}
    if noun in irregular:
        return irregular[noun]
    if noun.endswith(("s", "x", "ch", "sh")) or noun.endswith("o") and noun != "piano":
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def third_person(verb: str) -> str:
    if verb.endswith(("s", "x", "ch", "sh", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def past(verb: str) -> str:
    irregular = {"find": "found", "pour": "poured", "dry": "dried", "carry": "carried"}
    if verb in irregular:
        return irregular[verb]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def noun_phrase(rng: random.Random, lex: Lexicon) -> tuple[str, bool]:
    """(phrase, is_plural)"""
    is_plural = rng.random() < 0.4
    noun = rng.choice(lex.nouns)
    words = [rng.choice(("the", "some", "two", "many") if is_plural else ("the", "a", "every", "one"))]
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        words.append(rng.choice(lex.adjectives))
    words.append(plural(noun) if is_plural else noun)
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words), is_plural


def clause(rng: random.Random, lex: Lexicon, depth: int = 0) -> str:
    subject, is_plural = noun_phrase(rng, lex)
    verb = rng.choice(lex.verbs)
    tense = rng.random()
    if tense < 0.45:
        verb_form = verb if is_plural else third_person(verb)
    elif tense < 0.85:
        verb_form = past(verb)
    else:
        verb_form = f"will {verb}"
    obj, _ = noun_phrase(rng, lex)
    parts = [subject, verb_form, obj]
    if rng.random() < 0.5:
        parts.append(rng.choice(lex.places))
    if rng.random() < 0.3:
        parts.append(rng.choice(lex.times))
    if depth == 0 and rng.random() < 0.3:
        parts.append(f"{rng.choice(SUBORDINATORS)} {clause(rng, lex, depth + 1)}")
    return " ".join(parts)


def generate_text(size: int, seed: int, lexicon: str = "general") -> bytes:
    """About `size` bytes (cut at exactly `size`) of generated paragraphs, the same for the same seed."""
    rng, lex = random.Random(seed), LEXICONS[lexicon]
    paragraphs, total = [], 0
    while total < size:
        sentences = []
        for _ in range(rng.randint(3, 7)):
            text = clause(rng, lex)
            sentences.append(text[0].upper() + text[1:] + rng.choice(".....!"))
        paragraph = " ".join(sentences) + "\n\n"
        paragraphs.append(paragraph)
        total += len(paragraph)
    return "".join(paragraphs).encode("ascii")[:size]


def split_text(path: Path, out_dir: Path, prefix: str, shard_bytes: int) -> list[tuple[str, Path]]:
    """Cut a text file into shards of `shard_bytes` (the last one held out for evaluation, at most a tenth of the
    text): [(f"{prefix}-0000", file), …, (f"{prefix}-heldout", file)]. Raises ValueError for too little text."""
    data = path.read_bytes()
    if len(data) < 2 * 1024:
        raise ValueError(f"the text for {prefix!r} has {len(data)} bytes; at least 2 KiB are needed")
    held_out = min(shard_bytes, max(1024, len(data) // 10))
    train, evaluation = data[:-held_out], data[-held_out:]
    shards = [(f"{prefix}-{index:04d}", train[start:start + shard_bytes])
              for index, start in enumerate(range(0, len(train), shard_bytes))]  # fmt: skip
    shards.append((f"{prefix}-{HELD_OUT_NAME}", evaluation))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in shards:
        target = out_dir / name
        target.write_bytes(content)
        written.append((name, target))
    return written
