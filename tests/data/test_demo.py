"""The embedded demo corpus: real TTS synthesis of the --small corpus (seconds), validated
through the project's own manifest reader."""

from __future__ import annotations

import random
import shutil
from collections import Counter

import pytest

from raysearch_adapters.commands.main import main
from raysearch_adapters.data.demo import (ALL_VOICES, COMPLETE_MARKER, DOMAINS, NEW_TEST_ONLY_VOICES, SPLITS,
                                          build_demo_corpus, ensure_demo_corpus, read_complete_marker)
from raysearch_adapters.data.demo_synth import DemoDataError, check_tools
from raysearch_adapters.data.demo_text import (Sentence, frequent_word_sentences, speakable,
                                               split_held_out)
from raysearch_adapters.data.manifest import read_manifest

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the Debian TTS packages")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    return build_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", small=True, seed=0, jobs=2)


def _manifests(root):
    return {(d, s): read_manifest(root / d / f"{s}.json") for d in DOMAINS for s in SPLITS}


def test_small_corpus_manifests_validate(small_corpus):
    # read_manifest checks that every audio file exists and its duration matches the line.
    manifests = _manifests(small_corpus)
    assert all(len(utts) >= 10 for utts in manifests.values())
    for (domain, _), utts in manifests.items():
        for u in utts:
            assert u.audio_filepath.startswith(str(small_corpus / domain / "audio"))
            assert 0.3 < u.duration < 15
    assert (small_corpus / "DATASHEET.md").read_text().count("| original |") == 3
    assert read_complete_marker(small_corpus) == {"format": 1, "small": True, "seed": 0}


def test_splits_share_no_text(small_corpus):
    manifests = _manifests(small_corpus)
    for domain in DOMAINS:
        texts = {s: {u.text for u in manifests[(domain, s)]} for s in SPLITS}
        assert not texts["train"] & texts["dev"]
        assert not texts["train"] & texts["test"]
        assert not texts["dev"] & texts["test"]


def test_voices_differ_between_domains_and_new_test_holds_an_unseen_voice(small_corpus):
    manifests = _manifests(small_corpus)
    speakers = {key: {u.speaker for u in utts} for key, utts in manifests.items()}
    original = set().union(*(speakers[("original", s)] for s in SPLITS))
    new = set().union(*(speakers[("new", s)] for s in SPLITS))
    assert not original & new
    held_out = speakers[("new", "test")] - speakers[("new", "train")]
    assert held_out == {v.name for v in NEW_TEST_ONLY_VOICES}
    assert not held_out & speakers[("new", "dev")]


def test_new_domain_is_spelled_letters_digits_and_commands(small_corpus):
    utts = [u for s in SPLITS for u in read_manifest(small_corpus / "new" / f"{s}.json")]
    assert {u.extra["kind"] for u in utts} == {"letters", "digits", "command"}
    assert all(10 <= u.extra["snr_db"] <= 25 for u in utts)
    letters = [u for u in utts if u.extra["kind"] == "letters"]
    assert all(len(w) == 1 for u in letters for w in u.text.split())


def test_complete_corpus_is_reused(small_corpus):
    marker = (small_corpus / COMPLETE_MARKER).stat().st_mtime_ns
    assert build_demo_corpus(small_corpus, small=True, seed=0) == small_corpus
    assert ensure_demo_corpus(small_corpus) == small_corpus
    assert (small_corpus / COMPLETE_MARKER).stat().st_mtime_ns == marker


def test_interrupted_build_is_rebuilt_identically(small_corpus, tmp_path):
    # What a killed build leaves: a half-written corpus folder without the marker, and the
    # hidden work folder beside it.
    out = tmp_path / "corpus"
    (out / "original").mkdir(parents=True)
    (out / "original" / "train.json").write_text('{"audio_filepath": "x.flac"}\n')
    (tmp_path / ".corpus.partial" / "new").mkdir(parents=True)
    assert read_complete_marker(out) is None

    build_demo_corpus(out, small=True, seed=0, jobs=2)

    assert read_complete_marker(out) is not None
    assert not (tmp_path / ".corpus.partial").exists()
    first, again = _manifests(small_corpus), _manifests(out)
    for key in first:
        assert [(u.id, u.text, u.speaker) for u in again[key]] == [(u.id, u.text, u.speaker) for u in first[key]]
        assert [u.duration for u in again[key]] == [u.duration for u in first[key]]


def test_a_foreign_folder_is_never_deleted(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DemoDataError, match=r"not a demo corpus \(it holds notes.txt\)"):
        build_demo_corpus(tmp_path, small=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_missing_tts_programs_name_the_debian_packages(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(DemoDataError, match=r"apt-get install .*espeak-ng.*festival.*flite.*sox"):
        check_tools(ALL_VOICES)


def test_cli_reuses_the_corpus_and_prints_sizes(small_corpus, capsys):
    assert main(["demo-data", "--out", str(small_corpus), "--small"]) == 0
    out = capsys.readouterr().out
    assert f"demo corpus: {small_corpus}" in out
    assert "| new | test |" in out


def test_cli_rejects_negative_jobs(tmp_path, capsys):
    assert main(["demo-data", "--out", str(tmp_path / "c"), "--jobs", "-1"]) == 2
    assert "--jobs -1" in capsys.readouterr().err


def test_frequent_word_restriction_and_held_out_coverage():
    sentences = [Sentence(t, "x") for t in (
        "the cat sat down", "the dog sat down", "the cat ran off", "the dog ran off", "the cat sat off",
        "the dog ran down", "a zebra ate quinoa today")]
    kept = frequent_word_sentences(sentences, top_words=7)
    assert [s.text for s in kept] == [s.text for s in sentences[:-1]]
    train, dev, test = split_held_out(kept, 1, 1, random.Random(0))
    assert len(dev) == len(test) == 1 and len(train) == len(kept) - 2
    train_counts = Counter(w for s in train for w in s.text.split())
    for s in dev + test:
        assert all(train_counts[w] >= 2 for w in s.text.split())


def test_letters_are_spoken_as_letter_names():
    assert speakable("enter r u b") == "enter, R, U, B"
