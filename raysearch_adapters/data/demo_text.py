"""Texts of the embedded demo corpus: read sentences for the original domain, AN4-like
spelled letters, digit strings and commands for the new domain.

The original domain is limited to sentences made of frequent words only: a small CTC model
learns words that recur often in training fast, and open-vocabulary text leaves it stuck at a
high WER (about 50 % when tried on this corpus). Held-out sentences use only words seen in train.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from raysearch_adapters.data.text import normalize_text

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Debian `fortunes` categories without offensive, ASCII-art or jargon-heavy entries.
FORTUNE_CATEGORIES = ("art", "computers", "education", "food", "fortunes", "humorists", "literature",
                      "love", "medicine", "miscellaneous", "people", "pets", "platitudes", "science",
                      "songs-poems", "sports", "wisdom", "work")
MIN_WORDS, MAX_WORDS = 4, 16

_OVERSTRIKE = re.compile(".\x08")  # "_\bX": underlined X in old fortune files
_ATTRIBUTION = re.compile(r"^\s+(--|-)\s")  # "\t\t-- Mark Twain" ends the quote
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


@dataclass(frozen=True)
class Sentence:
    """A normalised sentence and the fortune category it came from."""

    text: str
    source: str


def _fortune_entries(path: Path) -> Iterable[str]:
    raw = _OVERSTRIKE.sub("", path.read_text(encoding="utf-8", errors="replace"))
    for entry in raw.split("\n%\n"):
        lines = []
        for line in entry.splitlines():
            if _ATTRIBUTION.match(line):
                break
            lines.append(line.strip())
        yield " ".join(lines)


def fortune_sentences(fortune_dir: Path = FORTUNE_DIR,
                      categories: Sequence[str] = FORTUNE_CATEGORIES) -> list[Sentence]:
    """Distinct normalised sentences of MIN_WORDS..MAX_WORDS words from the fortune files, in file order."""
    seen: set[str] = set()
    out: list[Sentence] = []
    for cat in categories:
        path = fortune_dir / cat
        if not path.is_file():
            continue
        for entry in _fortune_entries(path):
            for piece in _SENTENCE_END.split(entry):
                text = normalize_text(piece)
                n = len(text.split())
                if MIN_WORDS <= n <= MAX_WORDS and text not in seen:
                    seen.add(text)
                    out.append(Sentence(text, cat))
    return out


def frequent_word_sentences(sentences: Sequence[Sentence], top_words: int) -> list[Sentence]:
    """The sentences whose words are all among the ``top_words`` most frequent words of ``sentences``."""
    counts = Counter(w for s in sentences for w in s.text.split())
    # Ties broken alphabetically so the vocabulary does not depend on dict order.
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    vocab = set(ranked[:top_words])
    return [s for s in sentences if all(w in vocab for w in s.text.split())]


def split_held_out(sentences: Sequence[Sentence], n_dev: int, n_test: int, rng: random.Random,
                   min_train_count: int = 2) -> tuple[list[Sentence], list[Sentence], list[Sentence]]:
    """(train, dev, test): disjoint; every dev/test word still occurs ``min_train_count``+ times in train."""
    order = list(sentences)
    rng.shuffle(order)
    counts = Counter(w for s in order for w in s.text.split())
    held: list[Sentence] = []
    for s in order:
        if len(held) == n_dev + n_test:
            break
        words = Counter(s.text.split())
        if all(counts[w] - k >= min_train_count for w, k in words.items()):
            counts.subtract(words)
            held.append(s)
    held_set = set(held)
    train = [s for s in order if s not in held_set]
    return train, held[:n_dev], held[n_dev:]


# --------------------------------------------------------------------------- new domain

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = ("erase", "rubout", "enter", "repeat", "go", "stop", "yes", "no", "help", "start",
            "cancel", "next", "back", "delete", "clear", "done", "again", "quit")
# Words spelled letter by letter (AN4 speakers spell their names and a few words).
SPELLED_WORDS = ("rubout", "enter", "erase", "repeat", "help", "stop", "start", "cancel", "delete",
                 "clear", "quit", "name", "street", "city", "code", "mark", "paul", "anna", "james",
                 "mary", "linda", "robert", "susan", "david", "karen", "peter", "helen", "frank",
                 "grace", "oscar", "victor", "walter", "zoe", "max", "jack", "kim", "lucy")


def _digits(rng: random.Random, low: int, high: int) -> list[str]:
    return [rng.choice(DIGITS) for _ in range(rng.randint(low, high))]


def _letters(rng: random.Random) -> list[str]:
    if rng.random() < 0.5:
        return list(rng.choice(SPELLED_WORDS))
    return [rng.choice(LETTERS) for _ in range(rng.randint(2, 7))]


def an4_like_text(rng: random.Random) -> tuple[str, str]:
    """One (kind, text) of the new domain: spelled letters, a digit string or a command."""
    r = rng.random()
    if r < 0.35:
        return "letters", " ".join(_letters(rng))
    if r < 0.65:
        return "digits", " ".join(_digits(rng, 2, 7))
    if r < 0.75:
        return "command", rng.choice(COMMANDS)
    if r < 0.9:
        return "command", " ".join([rng.choice(COMMANDS), *_digits(rng, 1, 4)])
    return "command", " ".join([rng.choice(COMMANDS), *_letters(rng)])


def an4_like_texts(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` distinct (kind, text) pairs of the new domain."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < n:
        kind, text = an4_like_text(rng)
        if text not in seen:
            seen.add(text)
            out.append((kind, text))
    return out


def speakable(text: str) -> str:
    """What a TTS engine is given: single letters upper-cased and comma-separated so every
    engine says the letter name ("a" alone would be read as the article)."""
    return ", ".join(w.upper() if len(w) == 1 else w for w in text.split())
