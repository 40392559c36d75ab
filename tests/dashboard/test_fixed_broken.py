"""The "Fixed and broken" view of a real search, the audio it serves (exactly the files hypotheses.parquet
names) and refuses, the trial table's exports, and an unchanged view not sent again."""

from __future__ import annotations

import collections
import csv
import io
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dash_helpers import TRIALS, get, settled_view

from raysearch_adapters.dashboard.data import TABLE_COLUMNS
from raysearch_adapters.dashboard.page import build_view
from raysearch_adapters.results import TRIALS_SCHEMA, read_rows, write_table
from raysearch_adapters.results.hypotheses import DOMAINS, HYPOTHESES_SCHEMA, OUTCOMES, SPLITS


def _hypotheses(out: Path) -> list:
    return read_rows(out / "hypotheses.parquet", HYPOTHESES_SCHEMA)


def test_counts_in_the_view_equal_those_computed_from_the_file(demo_model_search):
    _, _, out = demo_model_search
    rows = _hypotheses(out)
    fb = build_view(out)["fixed_broken"]
    expected = {}
    for r in rows:
        c = expected.setdefault(f"{r['domain']} {r['split']}", collections.Counter())
        c["fixed" if r["winner_errors"] < r["base_errors"] else "broken" if r["winner_errors"] > r["base_errors"]
          else "unchanged"] += 1
    assert {s["label"]: s["counts"] for s in fb["sets"]} == {k: {o: v[o] for o in OUTCOMES}
                                                             for k, v in expected.items()}
    order = [f"{d} {s}" for s in SPLITS for d in DOMAINS]
    assert [s["label"] for s in fb["sets"]] == order
    assert fb["headline"] == "; ".join(f"{k}: {expected[k]['fixed']} fixed, {expected[k]['broken']} broken"
                                       for k in order)
    assert sum(len(s["utterances"]) for s in fb["sets"]) == len(rows)


def _column_errors(column, model: int) -> int:
    op, words = column[1 + 2 * model], column[2 + 2 * model]
    return 0 if op in ("", "=") else len(words.split()) if op == "I" else 1


def test_utterances_sorted_by_the_change_each_with_its_alignment(demo_model_search):
    _, _, out = demo_model_search
    rows = _hypotheses(out)
    for s in build_view(out)["fixed_broken"]["sets"]:
        deltas = [u["delta"] for u in s["utterances"]]
        assert deltas == sorted(deltas)  # the most fixed first, the most broken last
        for u in s["utterances"]:
            row = rows[u["row"]]
            assert (u["id"], u["base_errors"], u["winner_errors"]) == (row["utterance_id"], row["base_errors"],
                                                                       row["winner_errors"])
            assert [c[0] for c in u["grid"] if c[0] is not None] == row["reference"].split()
            assert sum(_column_errors(c, 0) for c in u["grid"]) == row["base_errors"]
            assert sum(_column_errors(c, 1) for c in u["grid"]) == row["winner_errors"]
            marks = {c[5] for c in u["grid"]}
            assert ("fixed" in marks) >= (u["outcome"] == "fixed") and ("broken" in marks) >= (u["outcome"] == "broken")


def test_the_report_keeps_the_most_fixed_and_most_broken_of_each_set(demo_model_search):
    _, _, out = demo_model_search
    full = {s["label"]: s for s in build_view(out)["fixed_broken"]["sets"]}
    for s in build_view(out, top_utterances=1)["fixed_broken"]["sets"]:
        every = full[s["label"]]["utterances"]
        fixed = [u for u in every if u["outcome"] == "fixed"]
        broken = [u for u in every if u["outcome"] == "broken"]
        assert s["utterances"] == fixed[:1] + broken[-1:]
        assert s["counts"] == full[s["label"]]["counts"] and s["substitutions"] == full[s["label"]]["substitutions"]


def test_without_a_winner_the_view_shows_the_base_model_alone(real_copy):
    rows = [dict(r, winner_hypothesis=None, winner_errors=None) for r in _hypotheses(real_copy)]
    write_table(real_copy / "hypotheses.parquet", rows, HYPOTHESES_SCHEMA)
    fb = build_view(real_copy)["fixed_broken"]
    assert fb["headline"] == "no winner: the base model's transcripts only"
    for s in fb["sets"]:
        assert not s["has_winner"] and s["wer"]["winner"] is None and s["substitutions"]["winner"] == []
        assert {u["outcome"] for u in s["utterances"]} == {None}
        assert all(c[3] is None and c[5] == "" for u in s["utterances"] for c in u["grid"])


def test_a_folder_without_hypotheses_says_so(finished_dir):
    assert "no hypotheses.parquet yet" in build_view(finished_dir)["fixed_broken"]["message"]


def test_audio_served_is_exactly_the_file_its_row_names(serve, real_copy):
    s = serve(real_copy)
    rows = _hypotheses(real_copy)
    for i, r in enumerate(rows):
        status, headers, body = get(s, f"/audio/{i}")
        assert status == 200 and headers["Content-Type"] == "audio/flac" and body == Path(r["audio_path"]).read_bytes()
    assert get(s, "/audio/0", "HEAD")[:3:2] == (200, b"")
    for method in ("POST", "PUT", "DELETE"):
        assert get(s, "/audio/0", method)[0] == 405


@pytest.mark.parametrize("path", [
    "/audio/-1", "/audio/100000", "/audio/1e1", "/audio/0x1", "/audio/%2Fetc%2Fpasswd", "/audio/..%2F..%2Fsecret.txt",
    "/audio/0/../../secret.txt", "/audio//etc/passwd", "/audio/secret.txt", "/audio/%30%2F..%2Fsecret.txt",
])
def test_a_request_for_anything_but_a_row_of_hypotheses_is_refused(serve, real_copy, path):
    (real_copy.parent / "secret.txt").write_text("SECRET")
    (real_copy / "secret.txt").write_text("SECRET")
    status, _, body = get(serve(real_copy), path)
    assert status in (400, 404) and b"SECRET" not in body


def test_named_files_that_are_no_plain_audio_file_are_refused(serve, real_copy, tmp_path):
    rows = _hypotheses(real_copy)
    audio = Path(rows[0]["audio_path"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("SECRET")
    (elsewhere / "link.flac").symlink_to(audio)  # a link to a real audio file, which is not the file named
    (elsewhere / "linked-folder").symlink_to(audio.parent, target_is_directory=True)
    os.mkfifo(elsewhere / "fifo.flac")
    named = {0: elsewhere / "secret.txt", 1: elsewhere / "link.flac", 2: elsewhere / "linked-folder" / audio.name,
             3: elsewhere / "fifo.flac", 4: Path(audio.name), 5: elsewhere / "missing.flac"}
    for i, path in named.items():
        rows[i]["audio_path"] = str(path)
    write_table(real_copy / "hypotheses.parquet", rows, HYPOTHESES_SCHEMA)
    s = serve(real_copy)
    for i in range(5):
        status, _, body = get(s, f"/audio/{i}")
        assert status == 403 and body.startswith(b"not served: ") and b"SECRET" not in body, (i, body)
    assert get(s, "/audio/5")[0] == 404
    assert get(s, "/audio/6")[:3:2] == (200, Path(rows[6]["audio_path"]).read_bytes())  # the others still play
    # hypotheses.parquet itself through a link out of the folder: no row is played, the view says why
    (real_copy / "hypotheses.parquet").rename(elsewhere / "hypotheses.parquet")
    (real_copy / "hypotheses.parquet").symlink_to(elsewhere / "hypotheses.parquet")
    assert get(s, "/audio/6")[0] == 403
    view = json.loads(get(s, "/api/view")[2])
    assert any("hypotheses.parquet: cannot be read: a link to outside" in m for m in view["errors"])
    assert "sets" not in view["fixed_broken"]


def test_trial_table_exports_have_the_columns_shown(serve, finished_dir, results_copy, tmp_path):
    s = serve(finished_dir)
    keys = [k for k, _ in TABLE_COLUMNS]
    trials = read_rows(finished_dir / "trials.parquet", TRIALS_SCHEMA)
    status, headers, body = get(s, "/export/trials.csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert 'filename="trials.csv"' in headers["Content-Disposition"]
    table = list(csv.reader(io.StringIO(body.decode())))
    assert table[0] == keys and [r[0] for r in table[1:]] == [t[0] for t in TRIALS]
    status, headers, body = get(s, "/export/trials.parquet")
    exported = pq.read_table(io.BytesIO(body))
    assert status == 200 and exported.schema.names == keys
    assert exported.to_pylist() == [{k: t[k] for k in keys} for t in trials]
    assert exported.schema.field("feasible").metadata[b"doc"].startswith(b"held_degradation <= kappa")
    assert get(s, "/export/trials.json")[0] == 404 and get(s, "/export/..%2Fsummary.json")[0] == 404
    (results_copy / "trials.parquet").rename(tmp_path / "trials.parquet")
    (results_copy / "trials.parquet").symlink_to(tmp_path / "trials.parquet")
    assert get(serve(results_copy), "/export/trials.csv")[0] == 403


def test_an_unchanged_view_is_not_sent_again(serve, finished_dir):
    s = serve(finished_dir)
    view = settled_view(s)
    again = json.loads(get(s, f"/api/view?known={view['fingerprint']}")[2])
    assert again == {"fingerprint": view["fingerprint"], "state": "finished", "unchanged": True}
    assert json.loads(get(s, "/api/view?known=stale")[2]) == view
