"""Hugging Face datasets and lhotse cuts as manifests: the same feature cache as the NeMo manifest of the same
audio, bit for bit; bad rows and bad inputs named (dataset, row, column) before anything is written."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf

from raysearch_adapters.config import ConfigError, FrontendConfig, load_config
from raysearch_adapters.data.cache import load_features
from raysearch_adapters.data.features import LogMelFrontend
from raysearch_adapters.data.manifest import ManifestError, read_manifest
from raysearch_adapters.data.source import DatasetOptions

datasets = pytest.importorskip("datasets")
lhotse = pytest.importorskip("lhotse")


def _utterances(small_demo):
    """(audio path, text) of the small demo's new-domain dev set."""
    return [(u.audio_filepath, u.text) for u in read_manifest(small_demo / "new" / "dev.json", check_audio=False)]


def _nemo(folder, items, name="nemo.json"):
    """The NeMo manifest of whole files (durations exact: the audio's own), or of (path, text, offset, duration)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for item in items:
        path, text, *segment = item
        info = sf.info(path)
        offset, duration = segment or (0.0, info.frames / info.samplerate)
        lines.append(json.dumps({"audio_filepath": path, "duration": duration, "text": text, "offset": offset}))
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def _saved(folder, items, **columns):
    ds = datasets.Dataset.from_dict({"audio": [p for p, _ in items], "text": [t for _, t in items], **columns})
    ds.cast_column("audio", datasets.Audio()).save_to_disk(str(folder))  # save_to_disk embeds the bytes
    return folder


def _features(manifest, cache, options=DatasetOptions()):
    config = FrontendConfig(n_mels=40)
    return load_features(manifest, LogMelFrontend(config).eval(), {"frontend": vars(config)}, cache, 16000,
                         progress=False, options=options)


def _assert_same(fs, expected):
    assert fs.texts == expected.texts and fs.num_frames == expected.num_frames
    for i in range(len(expected)):
        assert np.array_equal(fs.features(i).numpy(), expected.features(i).numpy()), i


def _audiofolder(folder, items):
    folder.mkdir()
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text"])
        for i, (path, text) in enumerate(items):
            name = f"clips/{i}_{path.rsplit('/', 1)[-1]}"
            (folder / "clips").mkdir(exist_ok=True)
            shutil.copy(path, folder / name)
            writer.writerow([name, text])
    return folder


def _cuts(path, cuts):
    lhotse.CutSet.from_cuts(cuts).to_file(str(path))
    return path


def _cut(audio, supervisions):
    """A cut of a whole file with supervisions ``[(id, start, duration, text)]``."""
    rec = lhotse.Recording.from_file(audio)
    sups = [lhotse.SupervisionSegment(id=i, recording_id=rec.id, start=s, duration=d, text=t)
            for i, s, d, t in supervisions]
    return lhotse.MonoCut(id=rec.id, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=sups)


@pytest.mark.parametrize("form", ["save_to_disk", "parquet_bytes", "parquet_paths", "audiofolder", "cuts"])
def test_each_form_gives_the_nemo_manifests_feature_cache_bit_for_bit(small_demo, tmp_path, form):
    items = _utterances(small_demo)
    expected = _features(_nemo(tmp_path, items), tmp_path / "cache")
    if form == "save_to_disk":
        given = _saved(tmp_path / "saved", items)
    elif form == "parquet_bytes":  # the saved dataset's embedded bytes, written as Parquet
        given = tmp_path / "bytes.parquet"
        datasets.load_from_disk(str(_saved(tmp_path / "saved", items))).to_parquet(str(given))
    elif form == "parquet_paths":  # Dataset.to_parquet of file-backed audio keeps the paths
        given = tmp_path / "paths.parquet"
        ds = datasets.Dataset.from_dict({"audio": [p for p, _ in items], "text": [t for _, t in items]})
        ds.cast_column("audio", datasets.Audio()).to_parquet(str(given))
    elif form == "audiofolder":
        given = _audiofolder(tmp_path / "folder", items)
    else:
        given = _cuts(tmp_path / "cuts.jsonl.gz",
                      [_cut(p, [(f"s{i}", 0.0, lhotse.Recording.from_file(p).duration, t)])
                       for i, (p, t) in enumerate(items)])
    _assert_same(_features(given, tmp_path / "cache"), expected)


def test_a_cut_with_a_supervision_per_segment_gives_one_utterance_each(small_demo, tmp_path):
    path, _ = _utterances(small_demo)[0]
    half = sf.info(path).frames / sf.info(path).samplerate / 2
    segments = [(path, "first half", 0.0, half), (path, "second half", half, half)]
    expected = _features(_nemo(tmp_path, segments), tmp_path / "cache")
    cuts = _cuts(tmp_path / "cuts.jsonl", [_cut(path, [("a", 0.0, half, "first half"), ("b", half, half,
                                                                                         "second half")])])
    utts = read_manifest(cuts)
    assert [(u.id, u.offset, u.duration) for u in utts] == [("a", 0.0, half), ("b", half, half)]
    _assert_same(_features(cuts, tmp_path / "cache"), expected)


def test_custom_columns_and_the_wrong_ones(small_demo, tmp_path):
    items = _utterances(small_demo)[:2]
    ds = datasets.Dataset.from_dict({"speech": [p for p, _ in items], "sentence": [t for _, t in items]})
    saved = tmp_path / "saved"
    ds.cast_column("speech", datasets.Audio()).save_to_disk(str(saved))
    utts = read_manifest(saved, options=DatasetOptions(text_column="sentence", audio_column="speech",
                                                       audio_dir=str(tmp_path / "audio")))
    assert [u.text for u in utts] == [t for _, t in items]
    assert all(u.audio_filepath.startswith(str(tmp_path / "audio")) for u in utts)
    with pytest.raises(ManifestError, match=rf"^dataset {saved}: no column 'audio' \(data.audio_column\); its "
                                            r"columns: speech, sentence; Audio columns: speech"):
        read_manifest(saved)
    with pytest.raises(ManifestError, match=rf"^dataset {saved}: no column 'text' \(data.text_column\); its "
                                            r"columns: speech, sentence"):
        read_manifest(saved, options=DatasetOptions(audio_column="speech"))


def test_bad_rows_are_named_and_skipped_and_nothing_is_written_first(small_demo, tmp_path):
    (a, ta), (b, _), (c, tc) = _utterances(small_demo)[:3]
    ds = datasets.Dataset.from_dict({"audio": [a, None, c, c], "text": [ta, "the b", "", tc]})
    saved = tmp_path / "saved"
    ds.cast_column("audio", datasets.Audio()).save_to_disk(str(saved))
    options = DatasetOptions(audio_dir=str(tmp_path / "audio"))
    with pytest.raises(ManifestError) as err:
        read_manifest(saved, options=options)
    assert err.value.problems == [
        f"dataset {saved}, row 1: column 'audio' is empty; expected audio (bytes or a file path)",
        f"dataset {saved}, row 2: column 'text' is empty; expected a transcript"]
    assert not (tmp_path / "audio").exists()  # the embedded audio is stored only once every row is good
    utts = read_manifest(saved, on_error="skip", options=options)
    assert [u.id for u in utts] == ["row 0", "row 3"] and all(sf.info(u.audio_filepath) for u in utts)
    report = [json.loads(x) for x in saved.with_name("saved.skipped.jsonl").read_text().splitlines()]
    assert [r["line"] for r in report] == [1, 2]


def test_a_dataset_without_audio_and_a_datasetdict(tmp_path):
    datasets.Dataset.from_dict({"text": ["a b"], "n": [1]}).save_to_disk(str(tmp_path / "texts"))
    with pytest.raises(ManifestError, match=rf"^dataset {tmp_path / 'texts'} has no audio: no Audio column among "
                                            r"its columns \(text, n\)"):
        read_manifest(tmp_path / "texts")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]}),
                               "test": datasets.Dataset.from_dict({"text": ["b"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ManifestError, match=r"is a DatasetDict of the splits train, test; expected one split's folder"):
        read_manifest(tmp_path / "dd")


def test_a_cut_without_supervision_or_text_is_a_bad_line(small_demo, tmp_path):
    (a, ta), (b, _) = _utterances(small_demo)[:2]
    cuts = _cuts(tmp_path / "cuts.jsonl.gz", [_cut(a, [("s0", 0.0, 0.5, ta)]), _cut(b, []),
                                              _cut(a, [("s2", 0.0, 0.5, "")])])
    with pytest.raises(ManifestError) as err:
        read_manifest(cuts)
    name = f"cuts {cuts}"
    assert err.value.problems[0].startswith(f"{name}, line 2: cut ") and "has no supervision" in err.value.problems[0]
    assert err.value.problems[1] == f"{name}, line 3: supervision 's2': text is empty; expected a transcript"
    assert [u.id for u in read_manifest(cuts, on_error="skip")] == ["s0"]


def test_a_hub_id_offline_is_one_error_naming_it(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    spec = "hf://someone/calls?config=en&split=train"
    with pytest.raises(ManifestError, match=r"^dataset hf://someone/calls\?config=en&split=train: cannot load it "
                                            r"from the Hugging Face hub \(offline"):
        read_manifest(spec)
    with pytest.raises(ManifestError, match=r"^hf://someone/calls: expected hf://ORG/NAME\?split=SPLIT"):
        read_manifest("hf://someone/calls")


def test_column_keys_are_validated():
    with pytest.raises(ConfigError, match=r"^data\.text_column: got ''; expected a column name"):
        load_config([], ["data.text_column=''"])
    with pytest.raises(ConfigError, match=r"^data\.audio_column: got 'x'; expected a column other than "
                                          r"data\.text_column"):
        load_config([], ["data.text_column=x", "data.audio_column=x"])


def test_a_reader_that_is_not_installed_is_one_error_naming_the_file_and_the_extra(small_demo, tmp_path, monkeypatch):
    (a, ta), = _utterances(small_demo)[:1]
    cuts = _cuts(tmp_path / "cuts.jsonl", [_cut(a, [("s0", 0.0, 0.5, ta)])])
    saved = _saved(tmp_path / "saved", [(a, ta)])
    for module in [m for m in list(sys.modules) if m == "lhotse" or m.startswith("lhotse.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "lhotse", None)  # what an environment without lhotse gives
    with pytest.raises(ManifestError, match=rf"^cuts {cuts}: reading it needs lhotse, which is not installed "
                                            r"\(.*\); pip install 'raysearch-adapters\[lhotse\]'$"):
        read_manifest(cuts)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ManifestError, match=r"^dataset hf://someone/calls\?split=train: reading it needs datasets, "
                                            r"which is not installed .*raysearch-adapters\[hf\]'$"):
        read_manifest("hf://someone/calls?split=train")
    with pytest.raises(ManifestError, match=rf"^dataset {saved}: reading it needs datasets, which is not installed "
                                            r".*raysearch-adapters\[hf\]'$"):
        read_manifest(saved)
