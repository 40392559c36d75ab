"""A search on a Hugging Face dataset and lhotse cuts: checked before anything is written, then run."""

from __future__ import annotations

import pytest

from builders import tiny_conformer, tiny_search_overrides
from raysearch_adapters.config import ConfigError, load_config
from raysearch_adapters.data.manifest import ManifestError, read_manifest
from raysearch_adapters.results.tables import TRIALS_SCHEMA, read_rows
from raysearch_adapters.search import run
from raysearch_adapters.search.preflight import preflight

datasets = pytest.importorskip("datasets")
lhotse = pytest.importorskip("lhotse")


def _save(manifest, folder):
    """The utterances of a NeMo manifest as a Hugging Face dataset saved with save_to_disk (audio embedded)."""
    utts = read_manifest(manifest, check_audio=False)
    ds = datasets.Dataset.from_dict({"audio": [u.audio_filepath for u in utts], "sentence": [u.text for u in utts]})
    ds.cast_column("audio", datasets.Audio()).save_to_disk(str(folder))
    return folder


def _parquet(manifest, path):
    """The utterances of a NeMo manifest as Parquet with an Audio column holding the bytes (a saved dataset's)."""
    datasets.load_from_disk(str(_save(manifest, path.with_suffix(".saved")))).to_parquet(str(path))
    return path


def _cuts(manifest, path):
    """The utterances of a NeMo manifest as lhotse cuts, one supervision each."""
    cuts = []
    for u in read_manifest(manifest, check_audio=False):
        rec = lhotse.Recording.from_file(u.audio_filepath)
        sup = lhotse.SupervisionSegment(id=u.id, recording_id=rec.id, start=0.0, duration=rec.duration, text=u.text)
        cuts.append(lhotse.MonoCut(id=rec.id, start=0.0, duration=rec.duration, channel=0, recording=rec,
                                   supervisions=[sup]))
    lhotse.CutSet.from_cuts(cuts).to_file(str(path))
    return path


@pytest.fixture(scope="module")
def dataset_overrides(search_data, tmp_path_factory):
    corpus, checkpoint, cache = search_data
    tmp = tmp_path_factory.mktemp("datasets_search")
    train, dev = _save(corpus / "new" / "train.json", tmp / "train"), _cuts(corpus / "new" / "dev.json",
                                                                              tmp / "dev.jsonl.gz")
    dev_as_train = _save(corpus / "new" / "dev.json", tmp / "dev_saved")
    trains = {"save_to_disk": train, "parquet": _parquet(corpus / "new" / "train.json", tmp / "train.parquet"),
              "cuts": _cuts(corpus / "new" / "train.json", tmp / "train.jsonl.gz")}

    def overrides(results, *extra, new_train=train):
        # lhotse supervisions keep the transcript in "text": data.text_column names the datasets' column
        text = [] if str(new_train).endswith(".jsonl.gz") else ["data.text_column=sentence"]
        return tiny_search_overrides(corpus, checkpoint, cache, results, "hf", f"data.new_train={new_train}",
                                     f"data.new_dev={dev}", *text, *extra)
    return overrides, train, dev, dev_as_train, trains


def test_preflight_reads_the_dataset_and_the_cuts(dataset_overrides, tmp_path):
    overrides, train, dev, dev_as_train, _ = dataset_overrides
    model = tiny_conformer(seed=0, num_layers=2)
    checked = preflight(load_config([], overrides(tmp_path)), model)
    assert checked[:2] == [str(train), str(dev)]
    with pytest.raises(ManifestError, match=rf"^dataset {train}: no column 'text' \(data.text_column\); its "
                                            r"columns: audio, sentence"):
        preflight(load_config([], overrides(tmp_path, "data.text_column=text")), model)
    # the dataset's embedded audio is a copy of the dev set's files: the same utterances
    with pytest.raises(ConfigError, match=rf"^data.new_train: {dev_as_train} shares 12 of its 12 utterances with "
                                          rf"data.new_dev \({dev}\), the first at dataset {dev_as_train}, row 0 = "
                                          rf"cuts {dev}, line 1; \S+ is a copy of "):
        preflight(load_config([], overrides(tmp_path, new_train=dev_as_train)), model)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("form", ["save_to_disk", "parquet", "cuts"])
def test_a_search_runs_on_each_form(ray_session, dataset_overrides, tmp_path, form):
    overrides, trains = dataset_overrides[0], dataset_overrides[4]
    cfg = load_config([], overrides(tmp_path, "search.num_trials=2", "search.kappa=1000", new_train=trains[form]))
    summary = run.run_search(cfg)
    rows = read_rows(tmp_path / "hf" / "trials.parquet", TRIALS_SCHEMA)
    assert len(rows) == 2 and summary["winner"] is not None
