"""hypotheses.parquet: its schema round trip, word errors and word alignments from jiwer, fixed/broken marks."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysearch_adapters.metrics import error_counts
from raysearch_adapters.results import ResultsSchemaError, read_rows, read_table, write_table
from raysearch_adapters.results.hypotheses import (HYPOTHESES_SCHEMA, Location, alignment_grids, hypothesis_rows,
                                                   outcome, set_wers, substitutions, word_errors)

REFS = ["a b c d", "the cat sat", "one two", "x", "keep it"]
BASE = ["a x c", "the cat sat on", "", "x", "keep it"]
WINNER = ["a b c d e", "the bat sat", "one two", "y z", "keep it"]


def _rows(winner=WINNER):
    locations = {f"u{i}": Location(i + 1, f"/audio/u{i}.wav", 0.5 * i, 1.0 + i) for i in range(len(REFS) - 1)}
    return hypothesis_rows("new", "dev", "/m/dev.json", [f"u{i}" for i in range(len(REFS))], REFS, locations, BASE,
                           winner)


def test_round_trip_keeps_every_column_and_each_has_a_doc(tmp_path):
    rows = _rows() + hypothesis_rows(None, None, "/m/other.json", ["v"], ["hello"], {}, ["hello"], None)
    path = tmp_path / "hypotheses.parquet"
    write_table(path, rows, HYPOTHESES_SCHEMA, {"search_id": "s"})
    assert read_rows(path, HYPOTHESES_SCHEMA) == rows
    assert pq.read_schema(path).metadata[b"search_id"] == b"s"
    assert all(f.metadata[b"doc"] for f in HYPOTHESES_SCHEMA)
    assert set(HYPOTHESES_SCHEMA.names) >= {"domain", "split", "utterance_id", "reference", "base_hypothesis",
                                            "winner_hypothesis", "base_errors", "winner_errors", "audio_path",
                                            "manifest", "line"}
    first, unknown, other = rows[0], rows[-2], rows[-1]
    assert (first["line"], first["audio_path"], first["duration"], first["reference_words"]) == (1, "/audio/u0.wav",
                                                                                                  1.0, 4)
    assert unknown["audio_path"] is None and unknown["line"] is None  # an id the manifest does not have
    assert other["winner_hypothesis"] is None and other["winner_errors"] is None and other["domain"] is None


def test_a_file_of_another_schema_is_refused_naming_the_columns(tmp_path):
    path = tmp_path / "hypotheses.parquet"
    table = pa.Table.from_pylist(_rows(), schema=HYPOTHESES_SCHEMA).drop_columns(["winner_errors"])
    pq.write_table(table.append_column("hypothesis", pa.array(["x"] * len(table))), path)
    with pytest.raises(ResultsSchemaError, match="missing: winner_errors; unexpected: hypothesis"):
        read_table(path, HYPOTHESES_SCHEMA)


def test_word_errors_are_jiwers_and_sum_to_the_corpus_counts():
    errors = word_errors(REFS, BASE)
    assert errors == [2, 1, 2, 0, 0]  # sub + del; ins; 2 del; right; right
    assert sum(errors) == error_counts(REFS, BASE)[0]
    assert word_errors(["", "a"], ["b c", ""]) == [2, 1]  # an empty reference: every hypothesis word inserted
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_errors(["a", "b"], ["a"])


def test_wers_and_outcomes_from_the_rows():
    rows = _rows()
    wers = set_wers(rows)
    assert wers["base"]["dev"]["new"] == pytest.approx(100.0 * error_counts(REFS, BASE)[0] / 12)
    assert wers["winner"]["dev"]["new"] == pytest.approx(100.0 * error_counts(REFS, WINNER)[0] / 12)
    assert [outcome(r) for r in rows] == ["fixed", "unchanged", "fixed", "broken", "unchanged"]
    no_winner = _rows(winner=None)
    assert set(set_wers(no_winner)) == {"base"} and {outcome(r) for r in no_winner} == {None}


def _columns(grid):
    return [(c.ref, c.base, c.winner, c.mark) for c in grid]


def test_alignment_grid_marks_fixed_and_broken_words():
    grids = alignment_grids(REFS, BASE, WINNER)
    assert _columns(grids[0]) == [("a", ("=", "a"), ("=", "a"), ""), ("b", ("S", "x"), ("=", "b"), "fixed"),
                                  ("c", ("=", "c"), ("=", "c"), ""), ("d", ("D", ""), ("=", "d"), "fixed"),
                                  (None, ("", ""), ("I", "e"), "broken")]
    # base inserted "on" (fixed by the winner), the winner substitutes "cat" (broken)
    assert _columns(grids[1]) == [("the", ("=", "the"), ("=", "the"), ""),
                                  ("cat", ("=", "cat"), ("S", "bat"), "broken"),
                                  ("sat", ("=", "sat"), ("=", "sat"), ""), (None, ("I", "on"), ("", ""), "fixed")]
    # "x" -> "y z": a substitution and an insertion (jiwer puts it before the word), both new
    assert [c.mark for c in grids[3]] == ["broken", "broken"] and {c.winner[0] for c in grids[3]} == {"I", "S"}
    # every word error of a model is in exactly one column
    for grid, base, winner in zip(grids, word_errors(REFS, BASE), word_errors(REFS, WINNER)):
        assert sum(c.errors(c.base) for c in grid) == base and sum(c.errors(c.winner) for c in grid) == winner
    assert all(c.winner is None and c.mark == "" for g in alignment_grids(REFS, BASE, None) for c in g)


def test_substitutions_before_and_after():
    grids = alignment_grids(REFS, BASE, WINNER)
    assert substitutions(grids, "base") == {("b", "x"): 1}
    assert substitutions(grids, "winner") == {("cat", "bat"): 1, ("x", "z"): 1}
