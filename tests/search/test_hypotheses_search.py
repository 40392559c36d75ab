"""hypotheses.parquet of a real search: the transcripts the search measured, every dev and test utterance once,
and what ``evaluate --adapter --hypotheses`` writes for the same manifests."""

from __future__ import annotations

import collections

import optuna

from raysearch_adapters.data.manifest import manifest_lines
from raysearch_adapters.results import read_rows
from raysearch_adapters.results.hypotheses import DOMAINS, HYPOTHESES_SCHEMA, SPLITS, outcome, set_wers
from raysearch_adapters.search.summary import format_summary


def test_wers_from_the_transcripts_are_the_searchs_own(demo_model_search):
    _, summary, out = demo_model_search
    wers = set_wers(read_rows(out / "hypotheses.parquet", HYPOTHESES_SCHEMA))
    winner = summary["winner"]
    assert winner["test_from_block"] is not None  # measured on the frozen-prefix cache, not the whole model
    # exactly equal: the same path, precision and batches as the search's own measurements
    assert wers["base"] == {"dev": summary["baseline"]["dev"], "test": summary["baseline"]["test"]}
    assert wers["winner"] == {"dev": winner["dev"], "test": winner["test"]}
    assert summary["paths"]["hypotheses"] == str(out / "hypotheses.parquet")
    assert f"transcripts:  {out / 'hypotheses.parquet'} (base model and winner, dev and test;" in format_summary(summary)


def test_every_dev_and_test_utterance_once_with_its_manifest_line_and_audio(demo_model_search):
    cfg, _, out = demo_model_search
    rows = read_rows(out / "hypotheses.parquet", HYPOTHESES_SCHEMA)
    for domain in DOMAINS:
        for split in SPLITS:
            manifest = getattr(cfg.data, f"{domain}_{split}")
            lines = manifest_lines(manifest)
            part = [r for r in rows if (r["domain"], r["split"]) == (domain, split)]
            assert sorted(r["utterance_id"] for r in part) == sorted(lines)
            for r in part:
                line, utt = lines[r["utterance_id"]]
                assert (r["line"], r["audio_path"], r["manifest"]) == (line, utt.audio_filepath, manifest)
    # the winner both fixed and broke utterances: the view has something to show
    outcomes = collections.Counter((r["domain"], outcome(r)) for r in rows)
    assert outcomes["new", "fixed"] > 0 and outcomes["original", "broken"] > 0


def test_evaluate_writes_the_same_rows_for_the_same_manifests(demo_model_search, tmp_path, capsys):
    from raysearch_adapters.commands.main import main

    cfg, _, out = demo_model_search
    written = tmp_path / "evaluated.parquet"
    dev = [cfg.data.new_dev, cfg.data.original_dev]
    assert main(["evaluate", "--model", "demo", "--adapter", str(out / "best_adapter.pt"), "--manifest", *dev,
                 f"data.demo_dir={cfg.data.demo_dir}", f"data.cache_dir={cfg.data.cache_dir}",
                 f"data.max_batch_seconds={cfg.data.max_batch_seconds}", "--hypotheses", str(written)]) == 0
    searched = [r for r in read_rows(out / "hypotheses.parquet", HYPOTHESES_SCHEMA) if r["split"] == "dev"]
    assert read_rows(written, HYPOTHESES_SCHEMA) == searched


def test_the_real_study_names_its_objective(demo_model_search):
    cfg, _, out = demo_model_search
    study = optuna.load_study(study_name=cfg.search.name, storage=f"sqlite:///{out / 'optuna.db'}")
    assert study.metric_names == ["dev_wer_new"]
