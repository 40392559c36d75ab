"""Manifests: round trips between formats, one clear error per bad line, and on_error=skip."""

import json
import logging

import pytest

from raysearch_adapters.data.manifest import (ManifestError, Utterance, default_id, read_manifest,
                                              write_manifest)
from raysearch_adapters.errors import UserError


def _lines(path, rows):
    """A manifest of ``rows``: dicts as JSON, strings as they are, bytes as they are (another encoding)."""
    path.write_bytes(b"".join((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode())
                              + b"\n" for r in rows))
    return path


def test_reads_nemo_lines(corpus, tmp_path):
    utts = read_manifest(corpus)
    assert [u.audio_filepath for u in utts] == [str(tmp_path / "audio" / n) for n in
                                                ("u0.wav", "u1.flac", "u2.wav", "u3.wav")]
    assert utts[0].id == utts[0].audio_filepath and utts[0].duration == 0.6
    assert utts[1].text == "Utterance 1!"  # kept as written; consumers normalise


def test_round_trip_json_parquet_json(tmp_path, tone):
    audio = tone(tmp_path / "data" / "long.wav", 3.0)
    outside = tone(tmp_path / "elsewhere" / "x.wav", 1.0)
    utts = [
        Utterance("utt-a", str(audio), 3.0, "hello there", speaker="spk1", extra={"lang": "en", "snr": 12.5}),
        Utterance(default_id(str(audio), 1.25), str(audio), 1.5, "a segment", offset=1.25),
        Utterance(default_id(str(outside)), str(outside), 1.0, "outside the folder", extra={"lang": "de"}),
    ]
    first = write_manifest(tmp_path / "data" / "m.json", utts)
    assert read_manifest(first) == utts
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    assert rows[0]["audio_filepath"] == "long.wav"  # inside the manifest folder: relative
    assert rows[2]["audio_filepath"] == str(outside)  # outside: absolute
    parquet = write_manifest(tmp_path / "data" / "m.parquet", read_manifest(first))
    assert read_manifest(parquet) == utts
    again = write_manifest(tmp_path / "data" / "again.jsonl", read_manifest(parquet))
    assert again.read_text() == first.read_text()


def test_utt_id_key_and_extra_keys_are_kept(tmp_path, tone):
    tone(tmp_path / "a.wav", 1.0)
    m = _lines(tmp_path / "m.jsonl", [{"audio_filepath": "a.wav", "duration": 1, "text": "x", "utt_id": "u1",
                                       "speaker": 7, "emotion": "calm"}])
    (utt,) = read_manifest(m)
    assert (utt.id, utt.speaker, utt.extra, utt.duration) == ("u1", "7", {"emotion": "calm"}, 1.0)


# Each case: manifest lines (line 1 is always good), the bad line number, and words of the message.
GOOD = {"audio_filepath": "a.wav", "duration": 1.0, "text": "good", "id": "ok"}
BAD_CASES = {
    "bad json": ('{"audio_filepath": "a.wav", "duration": 1.0,', "bad JSON"),
    "not an object": ("[1, 2]", "found a JSON list"),
    "missing key": ({"audio_filepath": "a.wav", "text": "x"}, "missing key 'duration'"),
    "wrong type": ({"audio_filepath": "a.wav", "duration": "1.0", "text": "x"}, "duration is '1.0'"),
    "text not a string": ({"audio_filepath": "a.wav", "duration": 1.0, "text": 5}, "text is 5; expected a string"),
    "negative offset": ({"audio_filepath": "a.wav", "duration": 0.5, "offset": -1, "text": "x"}, "offset is -1"),
    "missing audio": ({"audio_filepath": "nope.wav", "duration": 1.0, "text": "x"}, "nope.wav not found"),
    "unreadable audio": ({"audio_filepath": "junk.wav", "duration": 1.0, "text": "x"}, "is unreadable"),
    "empty text": ({"audio_filepath": "a.wav", "duration": 1.0, "text": " ?! "}, "empty after normalisation"),
    "duration too long": ({"audio_filepath": "a.wav", "duration": 1.5, "text": "x"}, "the audio is 1.000s long"),
    "duration too short": ({"audio_filepath": "a.wav", "duration": 0.5, "text": "x"}, "add 'offset'"),
    "segment past the end": ({"audio_filepath": "a.wav", "duration": 0.5, "offset": 0.9, "text": "x"},
                             "offset + duration = 1.400s"),
    "duplicate id": ({"audio_filepath": "a.wav", "duration": 1.0, "text": "x", "id": "ok"},
                     "duplicate id 'ok' (first at line 1)"),
    "empty audio": ({"audio_filepath": "empty.wav", "duration": 0.1, "text": "x"}, "empty.wav has no samples"),
    "empty audio, long duration": ({"audio_filepath": "empty.wav", "duration": 1.0, "text": "x"},
                                   "empty.wav has no samples (the file has 0 at 16000 Hz)"),
    "segment at the end": ({"audio_filepath": "a.wav", "duration": 0.2, "offset": 1.0, "text": "x"},
                           "a.wav has no samples from offset 1.000s for 0.200s"),
    "not UTF-8": ('{"audio_filepath": "a.wav", "duration": 1.0, "text": "stra\xdfe"}'.encode("latin-1"),
                  "not UTF-8 text (byte 0xdf at column 59)"),
}


@pytest.fixture
def audio_dir(tmp_path, tone):
    tone(tmp_path / "a.wav", 1.0)
    tone(tmp_path / "empty.wav", 0.0)  # a valid WAV header and no samples
    (tmp_path / "junk.wav").write_text("not audio")
    return tmp_path


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_each_bad_line_names_file_and_line(audio_dir, case):
    bad, words = BAD_CASES[case]
    m = _lines(audio_dir / "m.json", [GOOD, bad])
    with pytest.raises(ManifestError) as err:
        read_manifest(m)
    assert isinstance(err.value, UserError)
    assert err.value.problems == [err.value.problems[0]]  # exactly one problem: the bad line's
    assert err.value.problems[0].startswith(f"{m}:2: ")
    assert words in err.value.problems[0] and "expected" in err.value.problems[0]
    assert str(err.value).splitlines()[0].startswith(f"{m}: 1 of 2 lines are bad")


def test_every_problem_is_reported_at_once(audio_dir):
    rows = [GOOD] + [bad for bad, _ in BAD_CASES.values()]
    m = _lines(audio_dir / "m.json", rows)
    with pytest.raises(ManifestError) as err:
        read_manifest(m)
    bad_lines = {int(p.split(":")[1]) for p in err.value.problems}
    assert bad_lines == set(range(2, len(rows) + 1))


def test_duration_tolerance(audio_dir):
    m = _lines(audio_dir / "m.json", [{"audio_filepath": "a.wav", "duration": 1.2, "text": "x"}])
    assert len(read_manifest(m, duration_tolerance=0.25)) == 1
    with pytest.raises(ManifestError, match="tolerance 0.1s"):
        read_manifest(m, duration_tolerance=0.1)
    assert len(read_manifest(m, duration_tolerance=0.1, check_audio=False)) == 1


def test_skip_drops_exactly_the_bad_lines_and_reports_them(audio_dir, caplog):
    m = _lines(audio_dir / "m.json", [GOOD, BAD_CASES["missing audio"][0], "",
                                      {**GOOD, "id": "ok2"}, BAD_CASES["bad json"][0]])
    with caplog.at_level(logging.WARNING):
        utts = read_manifest(m, on_error="skip")
    assert [u.id for u in utts] == ["ok", "ok2"]
    report = [json.loads(line) for line in (audio_dir / "m.json.skipped.jsonl").read_text().splitlines()]
    assert [(r["line"], r["id"]) for r in report] == [(2, "nope.wav"), (5, None)]
    assert "not found" in report[0]["reason"] and "bad JSON" in report[1]["reason"]
    assert "skipped 2 of 4 lines" in caplog.text

    custom = audio_dir / "reports" / "r.jsonl"
    read_manifest(m, on_error="skip", report_path=custom)
    assert len(custom.read_text().splitlines()) == 2


def test_skip_drops_empty_audio_and_lines_in_another_encoding(audio_dir):
    m = _lines(audio_dir / "m.json", [GOOD, BAD_CASES["empty audio"][0], BAD_CASES["not UTF-8"][0],
                                      BAD_CASES["segment at the end"][0]])
    assert [u.id for u in read_manifest(m, on_error="skip")] == ["ok"]
    report = [json.loads(line) for line in (audio_dir / "m.json.skipped.jsonl").read_text().splitlines()]
    assert [(r["line"], r["id"]) for r in report] == [(2, "empty.wav"), (3, None), (4, "a.wav")]
    assert "has no samples" in report[0]["reason"] and "not UTF-8" in report[1]["reason"]


def test_a_line_longer_than_max_duration_is_a_bad_line(audio_dir, tone):
    tone(audio_dir / "long.wav", 2.0)
    m = _lines(audio_dir / "m.json", [GOOD, {"audio_filepath": "long.wav", "duration": 2.0, "text": "x"}])
    with pytest.raises(ManifestError) as err:
        read_manifest(m, max_duration=1.5)
    assert err.value.problems == [f"{m}:2: duration 2.000s is over data.max_duration (1.5s); expected at most 1.5s: "
                                  "split the recording into utterances, or raise data.max_duration"]
    assert [u.id for u in read_manifest(m, on_error="skip", max_duration=1.5)] == ["ok"]
    assert len(read_manifest(m, max_duration=2.0)) == len(read_manifest(m)) == 2


def test_a_utf8_byte_order_mark_is_not_a_bad_line(audio_dir):
    m = audio_dir / "m.json"
    m.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert [u.id for u in read_manifest(m)] == ["ok"]


def test_reading_reports_how_many_texts_normalisation_rewrote(audio_dir, caplog):
    texts = ["Hello, world!", "stra\u00dfe", "$5 please", "room 101"]
    m = _lines(audio_dir / "m.json", [{**GOOD, "id": str(i), "text": t} for i, t in enumerate(texts)])
    with caplog.at_level(logging.INFO, logger="raysearch_adapters.data.manifest"):
        read_manifest(m)
    assert (f"{m}: normalised 3 of 4 texts beyond lower-casing (numbers, money, symbols, non-ASCII letters "
            "spelled out)") in caplog.messages


def test_skip_with_nothing_left_fails(audio_dir):
    m = _lines(audio_dir / "m.json", [BAD_CASES["missing audio"][0]])
    with pytest.raises(ManifestError, match="all 1 lines are bad"):
        read_manifest(m, on_error="skip")


def test_parquet_problems_name_the_row(audio_dir):
    utts = read_manifest(_lines(audio_dir / "m.json", [GOOD, {**GOOD, "id": "b"}]))
    parquet = write_manifest(audio_dir / "m.parquet", utts)
    (audio_dir / "a.wav").unlink()
    with pytest.raises(ManifestError) as err:
        read_manifest(parquet)
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{parquet}:row 0", f"{parquet}:row 1"]


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "m.csv").write_text("a,b\n")
    with pytest.raises(ManifestError, match=r"unknown manifest extension '\.csv'; expected \.json"):
        read_manifest(tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="unknown manifest extension"):
        write_manifest(tmp_path / "m.txt", [])
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "absent.json")
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="cannot read Parquet"):
        read_manifest(tmp_path / "broken.parquet")


def test_empty_manifest_fails(tmp_path):
    (tmp_path / "m.json").write_text("\n\n")
    with pytest.raises(ManifestError, match="the manifest is empty"):
        read_manifest(tmp_path / "m.json")


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, tone):
    audio = tone(tmp_path / "a.wav", 1.0)
    m = write_manifest(tmp_path / "m.json", [Utterance(str(audio), str(audio), 1.0, "x")])
    write_manifest(tmp_path / "m.parquet", read_manifest(m))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "m.json", "m.parquet"]
