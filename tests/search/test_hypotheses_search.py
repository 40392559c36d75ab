"""hypotheses.parquet of a real search: the transcripts the search measured, every dev and test utterance once,
and what ``evaluate --adapter --hypotheses`` writes for the same manifests."""

from __future__ import annotations

import collections

import optuna
import pytest
import torch

from raysearch_adapters.adapters.state import load_adapter
from raysearch_adapters.data.cache import load_feature_set
from raysearch_adapters.data.manifest import manifest_lines
from raysearch_adapters.models.registry import load_base_model
from raysearch_adapters.results import read_rows
from raysearch_adapters.results.hypotheses import DOMAINS, HYPOTHESES_SCHEMA, SPLITS, outcome, set_wers
from raysearch_adapters.search.summary import format_summary
from raysearch_adapters.train.evaluate import evaluate
from raysearch_adapters.train.prefix import inputs_from, measurement_block, view_from


def test_dev_wers_from_the_transcripts_are_the_searchs_own(demo_model_search):
    _, summary, out = demo_model_search
    wers = set_wers(read_rows(out / "hypotheses.parquet", HYPOTHESES_SCHEMA))
    winner = summary["winner"]
    assert winner["test_from_block"] is not None  # measured on the frozen-prefix cache, not the whole model
    # exactly equal: the same path, precision and batches as the search's own dev measurements (made before the
    # transcripts were written; the test WERs are computed from them, so they are checked apart, below)
    assert wers["base"]["dev"] == summary["baseline"]["dev"]
    assert wers["winner"]["dev"] == winner["dev"]
    assert summary["paths"]["hypotheses"] == str(out / "hypotheses.parquet")
    assert f"transcripts:  {out / 'hypotheses.parquet'} (base model and winner, dev and test;" in format_summary(summary)


def test_the_summarys_test_wers_are_what_evaluate_measures_with_the_winners_adapter(demo_model_search):
    """The summary's test WERs come from hypotheses.parquet, so the file cannot check them: here they are measured
    again without it. The base model is loaded anew, the winner's adapter file loaded into it, and each test
    manifest decoded by ``train.evaluate.evaluate`` on the path the summary says the search measured from (the
    frozen-prefix cache at ``test_from_block``, the trial precision, the search's batch size); the base is the same
    model with the adapter disabled."""
    cfg, summary, out = demo_model_search
    winner = summary["winner"]
    model = load_base_model(cfg.model)
    handle, _, extra = load_adapter(out / "best_adapter.pt", model)
    k = measurement_block(handle, cfg.train.prefix_cache, bool(extra.get("hp", {}).get("specaugment")))
    assert k is not None and k == winner["test_from_block"]
    device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
    model.to(device)
    view = view_from(model, k)
    measure = dict(max_batch_seconds=cfg.data.max_batch_seconds, device=device, precision=cfg.train.precision)
    names = [s.name for s in cfg.measured_sets()]
    assert sorted(winner["test"]) == sorted(summary["baseline"]["test"]) == sorted(names) == ["new", "original"]
    changed = []
    for s in cfg.measured_sets():
        inputs = inputs_from(load_feature_set(cfg.data, model, s.test, progress=False), model, k, cfg.data.cache_dir)
        adapted = evaluate(view, inputs, **measure)
        with handle.disabled():
            base = evaluate(view, inputs, **measure)
        assert adapted["words"] > 0
        assert winner["test"][s.name] == pytest.approx(adapted["wer"], abs=1e-9)
        assert summary["baseline"]["test"][s.name] == pytest.approx(base["wer"], abs=1e-9)
        changed.append(adapted["hypotheses"] != base["hypotheses"])
    assert any(changed)  # the adapter file was applied: it changes transcripts


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
