"""A 2-trial search of tiny .nemo models (CTC-BPE, RNNT-BPE) on the small demo corpus, and its winner back in NeMo."""

from __future__ import annotations

import json

import pytest

from builders import tiny_search_overrides
from raysearch_adapters.config import load_config
from raysearch_adapters.data.text import normalize_text
from raysearch_adapters.metrics import error_counts
from raysearch_adapters.results import TRIALS_SCHEMA, read_rows
from raysearch_adapters.search import run


@pytest.fixture(scope="module", params=["ctc", "rnnt"])
def nemo_search(request, ray_session, small_demo, tiny_nemo, tmp_path_factory):
    """(kind, config, summary, results folder) of one search per kind; replay and distillation are searched."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"nemo_{kind}")
    name = f"nemo-{kind}"
    cfg = load_config([], tiny_search_overrides(small_demo, tiny_nemo(kind), root / "features", root, name,
                                                "model.name=nemo", "search.num_trials=2", "search.kappa=1000",
                                                "search.space.position.choices=[post]", "search.asha.enabled=false",
                                                "search.space.replay=[0.5]", "search.space.distill_weight=[2.0]"))
    return kind, cfg, run.run_search(cfg), root / name


def test_a_search_of_a_nemo_model_runs_end_to_end(nemo_search):
    kind, cfg, summary, out = nemo_search
    rows = read_rows(out / "trials.parquet", TRIALS_SCHEMA)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"COMPLETE"}, [r.get("error") for r in rows]
    assert all(r["replay"] == 0.5 and r["distill_weight"] == 2.0 for r in rows)
    winner = summary["winner"]
    assert winner is not None and set(winner["test"]) == {"new", "original"}
    assert (out / "best_adapter.pt").is_file() and (out / "hypotheses.parquet").is_file()
    assert "export-nemo" in json.loads((out / "summary.json").read_text())["winner"]["load"]


def _plain_nemo_wer(model, manifest: str) -> float:
    """WER (percent) of a NeMo model's own transcribe() on a manifest's audio, on normalised text."""
    lines = [json.loads(line) for line in open(manifest)]
    folder = manifest.rsplit("/", 1)[0]
    paths = [f"{folder}/{r['audio_filepath']}" for r in lines]
    hyps = model.transcribe(paths, batch_size=4, verbose=False)
    hyps = hyps[0] if isinstance(hyps, tuple) else hyps
    texts = [normalize_text(h.text if hasattr(h, "text") else h) for h in hyps]
    errors, words = error_counts([normalize_text(r["text"]) for r in lines], texts)
    return 100.0 * errors / words


def test_the_winner_exported_to_nemo_gives_the_same_dev_wers_in_plain_nemo(nemo_search, capsys):
    from raysearch_adapters.commands.main import main

    kind, cfg, summary, out = nemo_search
    assert main(["export-nemo", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'nemo_adapter.pt'}" in printed and "model.load_adapters(" in printed

    # plain NeMo, as the export prints it
    from nemo.collections.asr.models import ASRModel
    from nemo.core.classes.mixins import adapter_mixins
    from omegaconf import open_dict

    nemo_cfg = ASRModel.restore_from(cfg.model.checkpoint, return_config=True)
    with open_dict(nemo_cfg):
        nemo_cfg.encoder._target_ = adapter_mixins.get_registered_adapter(nemo_cfg.encoder._target_).adapter_class_path
    model = ASRModel.restore_from(cfg.model.checkpoint, override_config_path=nemo_cfg, map_location="cpu")
    model.load_adapters(str(out / "nemo_adapter.pt"))
    model.set_enabled_adapters(name="raysearch", enabled=True)
    model.eval()
    winner, base = summary["winner"]["dev"], summary["baseline"]["dev"]
    assert winner != base  # the adapter changes transcripts, so equal WERs below say NeMo runs it as we do
    assert _plain_nemo_wer(model, cfg.data.new_dev) == pytest.approx(winner["new"], abs=1e-9)
    assert _plain_nemo_wer(model, cfg.data.original_dev) == pytest.approx(winner["original"], abs=1e-9)
    model.set_enabled_adapters(enabled=False)
    assert _plain_nemo_wer(model, cfg.data.new_dev) == pytest.approx(base["new"], abs=1e-9)
