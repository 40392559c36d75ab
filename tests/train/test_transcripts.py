"""Where each row of hypotheses.parquet comes from: its manifest line and its audio (links resolved)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from raysearch_adapters.config import load_config
from raysearch_adapters.data.manifest import manifest_lines
from raysearch_adapters.train.transcripts import locations, set_of


def test_lines_are_numbered_like_the_manifest_messages_and_links_are_resolved(tmp_path):
    (tmp_path / "real.wav").write_bytes(b"RIFF")
    (tmp_path / "link.wav").symlink_to(tmp_path / "real.wav")
    lines = [json.dumps({"audio_filepath": "link.wav", "duration": 1.0, "text": "a", "id": "first"}), "",
             "not json", json.dumps({"audio_filepath": "real.wav", "duration": 0.5, "offset": 0.25, "text": "b"}),
             json.dumps({"audio_filepath": "real.wav", "duration": 1.0, "text": "c", "id": "first"})]
    manifest = tmp_path / "m.json"
    manifest.write_text("\n".join(lines) + "\n")
    found = locations(str(manifest))
    segment = f"{tmp_path / 'real.wav'}#0.25"
    assert set(found) == {"first", segment}
    assert found["first"].line == 1 and found["first"].audio_path == str(tmp_path / "real.wav")  # the link's target
    assert (found[segment].line, found[segment].offset, found[segment].duration) == (4, 0.25, 0.5)
    rows = [{"audio_filepath": "real.wav", "duration": 1.0, "text": "a", "id": f"r{i}"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    assert {uid: line for uid, (line, _) in manifest_lines(tmp_path / "m.parquet").items()} == {"r0": 0, "r1": 1,
                                                                                                 "r2": 2}


def test_domain_and_split_of_the_configs_manifests(tmp_path):
    cfg = load_config([], [f"data.new_dev={tmp_path / 'nd.json'}", f"data.original_test={tmp_path / 'ot.json'}"])
    assert set_of(cfg, str(tmp_path / "nd.json")) == ("new", "dev")
    assert set_of(cfg, str(tmp_path / "ot.json")) == ("original", "test")
    assert set_of(cfg, str(tmp_path / "elsewhere.json")) == (None, None)
    named = load_config([], ['data.original_dev=""', 'data.original_test=""', f"data.protected=[{{name: noisy, dev: "
                             f"{tmp_path / 'n.json'}, test: {tmp_path / 'nt.json'}}}]"])
    assert set_of(named, str(tmp_path / "nt.json")) == ("noisy", "test")


def test_rows_score_whisper_text_as_evaluate_does(small_demo, tmp_path):
    """Whisper writes "Erase 21." where the manifest says "erase two one": the rows (and the test WERs the
    search computes from them) compare the backbone's wer_text of both, as evaluate does."""
    from raysearch_adapters.config import ModelConfig
    from raysearch_adapters.models.registry import load_base_model
    from raysearch_adapters.results.hypotheses import set_wers
    from builders import save_tiny_whisper
    from raysearch_adapters.data.cache import load_feature_set
    from raysearch_adapters.metrics import error_counts
    from raysearch_adapters.train.transcripts import set_rows

    model = load_base_model(ModelConfig(name="whisper", checkpoint=str(save_tiny_whisper(tmp_path / "whisper"))))
    manifest = str(small_demo / "new" / "dev.json")
    cfg = load_config([], [f"data.cache_dir={tmp_path / 'cache'}"])
    features = load_feature_set(cfg.data, model, manifest, progress=False)
    # Whisper's spelling of each reference: capitalised, digits for the number words, a full stop
    digits = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine".split())}
    whispered = [" ".join(digits.get(w, w) for w in t.split()).capitalize() + "." for t in features.texts]
    assert any(h.lower().rstrip(".") != t for h, t in zip(whispered, features.texts))  # the spellings differ
    rows = set_rows("new", "dev", manifest, features, whispered, None, wer_text=model.wer_text)
    refs = [model.wer_text(t) for t in features.texts]
    errors, words = error_counts(refs, [model.wer_text(h) for h in whispered])
    assert errors == 0 and sum(r["base_errors"] for r in rows) == 0
    assert set_wers(rows)["base"]["dev"]["new"] == 100.0 * errors / words == 0.0
    assert [r["reference"] for r in rows] == refs  # stored as WER compares it


def test_evaluate_scores_wer_and_cer_on_the_same_normalised_text(small_demo, tmp_path):
    from raysearch_adapters.config import ModelConfig, WhisperOptions
    from raysearch_adapters.metrics import char_error_rate
    from raysearch_adapters.models.registry import load_base_model
    from builders import save_tiny_whisper
    from raysearch_adapters.data.cache import load_feature_set
    from raysearch_adapters.train.evaluate import evaluate

    model = load_base_model(ModelConfig(name="whisper", checkpoint=str(save_tiny_whisper(tmp_path / "whisper")),
                                        whisper=WhisperOptions(max_new_tokens=8)))
    cfg = load_config([], [f"data.cache_dir={tmp_path / 'cache'}"])
    features = load_feature_set(cfg.data, model, str(small_demo / "new" / "dev.json"), progress=False)
    r = evaluate(model, features, indices=range(8))
    refs = [model.wer_text(t) for t in features.texts[:8]]
    assert any(model.wer_text(h) != h for h in r["hypotheses"])  # raw Whisper text differs from what is scored
    assert r["cer"] == char_error_rate(refs, [model.wer_text(h) for h in r["hypotheses"]])


def test_base_transcripts_decoded_before_on_the_same_path_are_taken_not_decoded_again(small_demo, tmp_path):
    """The search's baseline decodes the base model's dev sets in setup; its test evaluation takes those transcripts
    (same path, precision and batches) rather than decoding them again, and decodes the rest."""
    from builders import tiny_conformer, with_random_adapters
    from raysearch_adapters.config import AdapterConfig
    from raysearch_adapters.data.cache import load_feature_set
    from raysearch_adapters.train.evaluate import transcribe
    from raysearch_adapters.train.transcripts import decode_sets

    model = tiny_conformer(seed=0, num_layers=2)
    handle = with_random_adapters(model, AdapterConfig(dim=4))
    cfg = load_config([], [f"data.cache_dir={tmp_path / 'cache'}"])
    sets = {(d, "dev"): (str(small_demo / d / "dev.json"),
                         load_feature_set(cfg.data, model, str(small_demo / d / "dev.json"), progress=False))
            for d in ("new", "original")}
    args = (model, handle, 0, sets, cfg.data.cache_dir, 30.0, "cpu", "fp32")
    decoded = decode_sets(*args)
    with handle.disabled():
        from raysearch_adapters.train.prefix import inputs_from, view_from

        base_new = transcribe(view_from(model, 0), inputs_from(sets[("new", "dev")][1], model, 0, cfg.data.cache_dir),
                              None, 30.0, "cpu", "fp32")
    new_rows = [r for r in decoded if r["domain"] == "new"]
    assert [r["base_hypothesis"] for r in new_rows] == [model.wer_text(h) for h in base_new]
    assert decode_sets(*args, known_base={("new", "dev"): base_new}) == decoded  # the same rows
    marked = ["known"] * len(base_new)
    rows = decode_sets(*args, known_base={("new", "dev"): marked})
    assert {r["base_hypothesis"] for r in rows if r["domain"] == "new"} == {"known"}  # taken, not decoded
    assert [r for r in rows if r["domain"] == "original"] == [r for r in decoded if r["domain"] == "original"]
