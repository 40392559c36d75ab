"""Text normalisation shared by manifests, tokenizer training and WER.

One function, so that the text a tokenizer is trained on, the text a model is trained to
emit and the references WER is scored against are spelled the same way.
"""

from __future__ import annotations

import re
import unicodedata

from anyascii import anyascii

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"))
# Numbers of more digits than this are spelled digit by digit ("a 16-digit card number" is read so); it also keeps
# every number away from int(), which refuses strings of more than 4300 digits.
_LONGEST_NUMBER = 15
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                  "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}

_SYMBOLS = {"&": " and ", "%": " percent ", "+": " plus ", "@": " at ", "=": " equals ",
            "$": " dollars ", "€": " euros ", "£": " pounds ", "#": " number ", "°": " degrees "}
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})
# Currency symbol -> (unit, units, subunit, subunits).
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence")}

# "1,000" -> "1000" (thousands separators), but only in a well-formed grouping.
_THOUSANDS = re.compile(r"\b(\d{1,3})((?:,\d{3})+)\b")
# "$5", "€3.50", "£2 million": a currency symbol before an amount (after separators are gone).
_MONEY = re.compile(r"([$€£])\s?(\d+)(?:\.(\d+))?(?:\s+(thousand|million|billion|trillion)\b)?", re.IGNORECASE)
# Ordinals first ("21st"), then decimals ("3.5"), then plain integers.
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
# Each starts only where a run of digits starts: a pattern free to start inside a run backtracks over the
# rest of the run at every digit (quadratic: a minute for a 100,000-digit transcript).
_DECIMAL = re.compile(r"(?<!\d)(\d+)\.(\d+)")
_INTEGER = re.compile(r"\d+")
_NOT_ALLOWED = re.compile(r"[^a-z' ]+")
# Apostrophes that are quotes rather than part of a word ("'hello'", "' ").
_STRAY_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")


def number_to_words(n: int) -> str:
    """Spell a non-negative integer in English words ("42" -> "forty two"); huge numbers digit by digit."""
    if n < 0:
        raise ValueError(f"number_to_words: got {n}; expected a non-negative integer")
    if n >= 10 ** _LONGEST_NUMBER:
        return _digits(str(n))
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_to_words(rest)}" if rest else "")
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return f"{number_to_words(head)} {name}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable: every n >= 1000 has a scale")


def _spell(digits: str) -> str:
    """:func:`number_to_words` of a string of digits, of any length (long ones never go through int())."""
    significant = digits.lstrip("0") or "0"
    return _digits(significant) if len(significant) > _LONGEST_NUMBER else number_to_words(int(significant))


def _ordinal(digits: str) -> str:
    words = _spell(digits).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _digits(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


def _money(m: re.Match) -> str:
    unit, units, subunit, subunits = _CURRENCIES[m.group(1)]
    whole, cents, scale = _spell(m.group(2)), m.group(3), m.group(4)
    if scale or (cents is not None and len(cents) != 2):  # "$2 million", "$3.5": the amount, then the unit
        amount = whole + (f" point {_digits(cents)}" if cents else "")
        return f" {amount}{' ' + scale.lower() if scale else ''} {units} "
    cents_n = int(cents or 0)
    if whole == "zero" and cents_n:
        return f" {number_to_words(cents_n)} {subunit if cents_n == 1 else subunits} "
    return f" {whole} {unit if whole == 'one' else units}" + (
        f" {number_to_words(cents_n)} " if cents_n else " ")


def _transliterate(s: str) -> str:
    """Non-ASCII letters and digits in ASCII (anyascii: ß -> ss, Ø -> O, ½ -> 1/2, ٣ -> 3); other
    non-ASCII characters (symbols, punctuation) become spaces, as ASCII punctuation does."""
    return "".join(c if c.isascii() else anyascii(c) if unicodedata.category(c)[0] in "LMN" else " " for c in s)


def _finish(s: str) -> str:
    s = _NOT_ALLOWED.sub(" ", s)
    s = _STRAY_APOSTROPHE.sub(" ", s)
    return " ".join(s.split())


def normalize_text(s: str) -> str:
    """Lower-case, spell numbers, money and common symbols as words, keep only a-z, apostrophe and single spaces.

    Never splits a word: non-ASCII letters are transliterated ("straße" -> "strasse", "Øresund" ->
    "oresund"), not dropped. Money reads in spoken order: "$5" -> "five dollars", "$1" -> "one
    dollar", "€3.50" -> "three euros fifty", "$0.99" -> "ninety nine cents", "£2 million" -> "two
    million pounds"; other decimals after the amount ("$3.5" -> "three point five dollars").
    """
    s = s.translate(_APOSTROPHES)
    s = _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    s = _MONEY.sub(_money, s)
    for symbol, word in _SYMBOLS.items():
        s = s.replace(symbol, word)
    s = _transliterate(s).lower()
    s = _ORDINAL.sub(lambda m: f" {_ordinal(m.group(1))} ", s)
    s = _DECIMAL.sub(lambda m: f" {_spell(m.group(1))} point {_digits(m.group(2))} ", s)
    s = _INTEGER.sub(lambda m: f" {_spell(m.group(0))} ", s)
    return _finish(s)


def is_rewritten(s: str) -> bool:
    """Whether :func:`normalize_text` did more to ``s`` than lower-case it and drop punctuation: spelled a
    number, money or a symbol, or transliterated a letter."""
    return normalize_text(s) != _finish(s.translate(_APOSTROPHES).lower())
