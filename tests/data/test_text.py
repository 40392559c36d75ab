"""normalize_text: the one spelling shared by manifests, the tokenizer and WER."""

import time

import pytest

from raysearch_adapters.data.text import is_rewritten, normalize_text, number_to_words


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "hello world"),
    ("42", "forty two"),
    ("Tom & Jerry", "tom and jerry"),
    ("50% off", "fifty percent off"),
    ("1,000,000 stars", "one million stars"),
    ("pi is 3.14", "pi is three point one four"),
    ("the 21st and 2nd", "the twenty first and second"),
    ("Don\u2019t 'quote' me", "don't quote me"),
    ("Caf\u00e9 na\u00efve", "cafe naive"),
    ("  many   spaces\tand\nlines ", "many spaces and lines"),
    ("room 101", "room one hundred one"),
    ("2024", "two thousand twenty four"),
    ("---", ""),
    # Non-ASCII letters are transliterated, never dropped (which split "stra e").
    ("stra\u00dfe", "strasse"),
    ("\u00d8resund Bridge", "oresund bridge"),
    ("\u0141\u00f3d\u017a", "lodz"),
    ("\u0395\u03bb\u03bb\u03ac\u03b4\u03b1", "ellada"),
    ("done \u2713", "done"),  # a non-ASCII symbol is dropped, not transliterated ("v")
    # Money reads in spoken order.
    ("$5", "five dollars"),
    ("$1 each", "one dollar each"),
    ("\u20ac3.50", "three euros fifty"),
    ("$0.99", "ninety nine cents"),
    ("\u00a30.01", "one penny"),
    ("$1,000", "one thousand dollars"),
    ("\u00a32 million", "two million pounds"),
    ("$3.5", "three point five dollars"),
    ("$5.00", "five dollars"),
    ("paid in \u20ac", "paid in euros"),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize("word", ["stra\u00dfe", "na\u00efve", "\u00d8resund", "\u0152uvre", "\ufb01ne",
                                  "\u041c\u043e\u0441\u043a\u0432\u0430", "e\u0301te\u0301"])
def test_normalisation_never_splits_a_word(word):
    assert len(normalize_text(word).split()) == 1


@pytest.mark.parametrize("raw, rewritten", [("Hello, World!", False), ("don't", False), ("stra\u00dfe", True),
                                            ("$5", True), ("room 101", True), ("50%", True)])
def test_is_rewritten_tells_more_than_lower_casing(raw, rewritten):
    assert is_rewritten(raw) is rewritten


def test_output_alphabet_is_closed():
    # Whatever comes in, only a-z, apostrophe and single spaces come out.
    out = normalize_text("Ünïcode ✓ @home #1 — 7×8 = 56 ¿qué? ½ 10^3 \"x\"")
    assert set(out) <= set("abcdefghijklmnopqrstuvwxyz' ")
    assert "  " not in out and out == out.strip()


def test_number_to_words_scales():
    assert number_to_words(0) == "zero"
    assert number_to_words(1_002_003) == "one million two thousand three"
    assert number_to_words(10 ** 15) == "one " + " ".join(["zero"] * 15)
    with pytest.raises(ValueError):
        number_to_words(-1)


def test_a_number_of_thousands_of_digits_is_spelled_digit_by_digit():
    # past Python's int-string conversion limit (4300 digits): int() would raise a ValueError here
    assert normalize_text("code " + "7" * 5000) == "code " + " ".join(["seven"] * 5000)
    assert normalize_text("0" * 20 + "42") == "forty two"  # leading zeros: as the number they write
    assert normalize_text("$" + "1" * 16 + ".50") == " ".join(["one"] * 16) + " dollars fifty"
    assert normalize_text("1" * 16 + "th") == " ".join(["one"] * 15) + " first"


@pytest.mark.parametrize("shape", ["{}", "{}.5", "3.{}", "{}th", "${}", "x{}y"])
def test_normalisation_is_linear_in_a_long_number(shape):
    # 100,000 digits: a regex that backtracks at every digit takes a minute here, a linear one milliseconds
    raw = shape.format("9" * 100_000)
    start = time.perf_counter()
    out = normalize_text(raw)
    assert time.perf_counter() - start < 5.0
    assert out.count("nin") == 100_000  # nine ... ninth
