"""normalize_text: the one spelling shared by manifests, the tokenizer and WER."""

import pytest

from raysearch_adapters.data.text import normalize_text, number_to_words


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
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


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
