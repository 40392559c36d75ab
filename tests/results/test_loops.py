"""Looping hypotheses: the compression-ratio rule, their flags in hypotheses.parquet, their counts and the
summary's warning."""

from __future__ import annotations

import zlib

from raysearch_adapters.metrics import LOOP_COMPRESSION_RATIO, compression_ratio, is_looping
from raysearch_adapters.results.hypotheses import hypothesis_rows, loop_counts
from raysearch_adapters.search.summary import _loops_lines

# The utterance a fine-tuned Whisper decoder looped on until its token limit (docs/protecting.md).
LOOP = " ".join(["i always love you"] * 12)
LONG = ("the committee will publish its findings next spring after hearing from farmers teachers nurses and "
        "several hundred residents of the valley who wrote in about the new road the closed school and the "
        "price of water")


def test_a_looping_hypothesis_is_flagged_and_a_long_varied_one_is_not():
    assert compression_ratio(LOOP) == len(LOOP.encode()) / len(zlib.compress(LOOP.encode()))
    assert compression_ratio(LOOP) > 3.5 and is_looping(LOOP)
    assert len(LONG.split()) > 30 and compression_ratio(LONG) < LOOP_COMPRESSION_RATIO and not is_looping(LONG)
    assert not is_looping("i always love you all") and not is_looping("") and compression_ratio("") == 0.0
    # openai/whisper's threshold: 2.4
    assert is_looping(LOOP, threshold=compression_ratio(LOOP) - 0.01) and not is_looping(LOOP, compression_ratio(LOOP))


def test_rows_flag_loops_and_the_counts_say_which_the_winner_added():
    refs = ["i always pass on good advice", "the cat sat", "five three nine"]
    base = ["i always love you all", "the cat sat", " ".join(["nine"] * 40)]
    winner = [LOOP, "the cat sat", " ".join(["nine"] * 40)]
    rows = (hypothesis_rows("original", "test", "/m/t.json", ["a", "b", "c"], refs, {}, base, winner)
            + hypothesis_rows("original", "dev", "/m/d.json", ["d"], ["x y"], {}, ["x y"], ["x y"]))
    assert [(r["base_looping"], r["winner_looping"]) for r in rows] == [(False, True), (False, False), (True, True),
                                                                        (False, False)]
    counts = loop_counts(rows)
    assert counts == {"base": {"dev": {"original": 0}, "test": {"original": 1}},
                      "winner": {"dev": {"original": 0}, "test": {"original": 2}},
                      "new": {"dev": {"original": 0}, "test": {"original": 1}}}
    lines = _loops_lines(counts)
    assert lines[0] == ("looping transcripts (zlib compression ratio > 2.4), new/original domain: base model dev 0/0, "
                        "test 0/1; winner dev 0/0, test 0/2")
    assert lines[1].startswith("WARNING: the winner loops on 1 original-domain test utterance(s) that the base model "
                               "transcribes without looping")
    no_winner = hypothesis_rows("new", "dev", "/m/d.json", ["a"], ["x"], {}, [LOOP], None)
    assert no_winner[0]["winner_looping"] is None and loop_counts(no_winner) == {"base": {"dev": {"new": 1}}}
    assert len(_loops_lines(loop_counts(no_winner))) == 1


def test_the_report_keeps_every_utterance_the_winner_loops_on_beside_the_most_changed():
    from raysearch_adapters.dashboard.fixed_broken import _most_changed

    def utt(i, outcome, delta, winner_looping=False, base_looping=False):
        return {"id": f"u{i}", "outcome": outcome, "delta": delta, "winner_looping": winner_looping,
                "base_looping": base_looping}

    utterances = [utt(0, "fixed", -3), utt(1, "fixed", -1), utt(2, "unchanged", 0),
                  utt(3, "broken", 1, winner_looping=True), utt(4, "broken", 2), utt(5, "broken", 40, winner_looping=True),
                  utt(6, "unchanged", 0, winner_looping=True, base_looping=True)]
    kept = [u["id"] for u in _most_changed(utterances, top=1)]
    assert kept == ["u0", "u5", "u3"]  # the most fixed, the most broken, then the other new loop
