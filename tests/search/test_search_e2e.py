"""The whole search on real components: tiny model, small demo corpus, real local Ray, Optuna on SQLite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from raysearch_adapters.testing import tiny_search_overrides
from raysearch_adapters.adapters.state import load_adapter
from raysearch_adapters.config import ModelConfig, load_config
from raysearch_adapters.models.registry import load_base_model
from raysearch_adapters.results import EPOCHS_SCHEMA, TRIALS_SCHEMA, read_rows
from raysearch_adapters.search import run
from raysearch_adapters.search.searcher import TUNE_TRIAL_ID
from raysearch_adapters.train.worker import trial_loop_config

FINAL = {"COMPLETE", "PRUNED", "FAIL"}


@pytest.fixture(scope="module")
def e2e(ray_session, search_data, tmp_path_factory):
    """One 4-trial search with kappa 0, counting the driver's feature-set loads per manifest."""
    results = tmp_path_factory.mktemp("e2e")
    cfg = load_config([], tiny_search_overrides(*search_data, results, "e2e", "search.kappa=0.0"))
    loads = []
    real = run.load_feature_set

    def counting(data, model, manifest, progress=False):
        loads.append(manifest)
        return real(data, model, manifest, progress)

    run.load_feature_set = counting
    try:
        summary = run.run_search(cfg)
    finally:
        run.load_feature_set = real
    return cfg, summary, loads, results / "e2e"


def test_results_files_match_their_schemas(e2e):
    cfg, summary, _, out = e2e
    trials = read_rows(out / "trials.parquet", TRIALS_SCHEMA)
    epochs = read_rows(out / "epochs.parquet", EPOCHS_SCHEMA)
    assert len(trials) == 4 and len({r["trial_id"] for r in trials}) == 4
    assert {r["status"] for r in trials} <= FINAL
    assert {e["trial_id"] for e in epochs} <= {r["trial_id"] for r in trials}
    for r in trials:
        if r["status"] != "FAIL":
            assert r["adapter_params"] > 0 and r["device"] == "cpu" and r["node_id"] and r["checkpoint_path"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["kappa"] == 0.0 and on_disk["versions"]["ray"] and on_disk["versions"]["optuna"]
    assert set(on_disk["baseline"]) == {"dev", "test"} and on_disk["trials"]["total"] == 4
    t = on_disk["timings_s"]
    assert t["trials"] > 0 and t["total"] == pytest.approx(t["setup"] + t["trials"] + t["test"])


def test_test_sets_are_touched_once_and_only_after_the_search(e2e):
    cfg, _, loads, _ = e2e
    tests = [cfg.data.new_test, cfg.data.original_test]
    assert [m for m in loads if m in tests] == tests  # once each
    assert loads[-2:] == tests  # after every dev/train load: the final evaluation
    # what a trial receives cannot name a test manifest
    data = trial_loop_config(cfg, {}, 0.0)["cfg"]["data"]
    assert data["new_test"] == data["original_test"] == ""


def test_winner_is_feasible_and_no_feasible_trial_beats_it(e2e):
    cfg, summary, _, out = e2e
    rows = [r for r in read_rows(out / "trials.parquet", TRIALS_SCHEMA) if r["status"] != "FAIL"]
    winner = summary["winner"]
    if winner is None:  # kappa 0 on a random tiny model may leave nothing feasible: said plainly
        assert all(r["degradation"] > 0 for r in rows) and summary["no_feasible_trial"] is not None
        assert not (out / "best_adapter.pt").exists()
        return
    assert winner["degradation"] <= 0.0
    better = [r for r in rows if r["dev_wer_new"] < winner["dev"]["new"]]
    assert all(r["degradation"] > 0.0 for r in better)  # every better trial on new WER is infeasible
    assert set(winner["test"]) == {"new", "original"}


def _tune_results(out) -> dict:
    """Tune's result.json lines of every trial of a search, by trial folder."""
    return {d.name: [json.loads(line) for line in (d / "result.json").read_text().splitlines() if line.strip()]
            for d in (out / "tune").iterdir() if (d / "result.json").is_file()}


def test_one_worker_trials_train_in_reused_tune_actors(e2e):
    cfg, summary, _, out = e2e
    results = _tune_results(out)
    assert len(results) == 4
    pids = {line["pid"] for lines in results.values() for line in lines}
    # two trials at a time, so at most two actors: the other trials ran in a reused one
    assert len(pids) <= cfg.resources.max_concurrent_trials < len(results)
    rows = read_rows(out / "trials.parquet", TRIALS_SCHEMA)
    assert not (out / "train").exists()  # no TorchTrainer run
    # blocks all -> k=0, top:1 -> the last block: trials trained on cached prefix outputs
    prefixes = {p.name.split("-prefix")[1].split("-")[0] for p in Path(cfg.data.cache_dir).glob("*-prefix*.arrow")}
    assert prefixes and prefixes <= {"0", "1"}
    for r in rows:  # the adapter checkpoint of each trial's last evaluation, kept by Tune
        assert r["checkpoint_path"].startswith(str(out / "tune")) and os.path.isdir(r["checkpoint_path"])


def test_multi_worker_trials_run_ray_train_ddp(ray_session, search_data, tmp_path):
    overrides = tiny_search_overrides(*search_data, tmp_path, "ddp", "search.kappa=1000", "search.num_trials=2",
                                      "resources.num_workers=2", "resources.cpus_per_worker=0.5",
                                      "resources.max_concurrent_trials=1", "search.asha.enabled=false")
    summary = run.run_search(load_config([], overrides))
    out = tmp_path / "ddp"
    rows = read_rows(out / "trials.parquet", TRIALS_SCHEMA)
    assert [r["status"] for r in rows] == ["COMPLETE", "COMPLETE"]
    for r in rows:  # checkpoints written by the Train run's rank 0
        assert r["checkpoint_path"].startswith(str(out / "train"))
    assert summary["winner"] is not None
    handle, _, _ = load_adapter(out / "best_adapter.pt", load_base_model(ModelConfig(checkpoint=str(search_data[1]))))
    assert handle.num_params == summary["winner"]["adapter_params"]


def _finished(out) -> int:
    try:
        return sum(r["status"] in FINAL for r in read_rows(out / "trials.parquet", TRIALS_SCHEMA))
    except Exception:  # not written yet
        return 0


def test_a_killed_search_resumes_with_every_trial_exactly_once(ray_session, search_data, tmp_path):
    overrides = tiny_search_overrides(*search_data, tmp_path, "resume", "search.kappa=1000")
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "raysearch_adapters.cli", "search", *overrides], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out = tmp_path / "resume"
    deadline = time.time() + 300
    while _finished(out) < 2 and driver.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert driver.poll() is None, "the driver ended before it could be interrupted"
    os.kill(driver.pid, signal.SIGKILL)  # a hard kill: no chance to save anything
    driver.wait()
    assert not (out / "summary.json").exists()

    summary = run.run_search(load_config([], overrides), resume=True)
    rows = read_rows(out / "trials.parquet", TRIALS_SCHEMA)
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    assert {r["status"] for r in rows} <= FINAL
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{out / 'optuna.db'}")
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for r in rows:
        (match,) = [t for t in study.trials if t.user_attrs.get(TUNE_TRIAL_ID) == r["trial_id"]]
        if r["status"] != "FAIL":
            assert match.state.name == r["status"]
    # with kappa 1000 every measured trial is feasible: a winner, its adapter file loads on the base model
    assert summary["winner"] is not None
    handle, _, _ = load_adapter(out / "best_adapter.pt",
                                load_base_model(ModelConfig(checkpoint=str(search_data[1]))))
    assert handle.num_params == summary["winner"]["adapter_params"]


def test_a_missing_base_model_fails_before_anything_is_written(ray_session, search_data, tmp_path):
    from raysearch_adapters.errors import UserError

    missing = tmp_path / "nope.pt"
    overrides = tiny_search_overrides(*search_data, tmp_path, "nomodel", f"model.checkpoint={missing}")
    with pytest.raises(UserError, match=r"nope\.pt: checkpoint not found"):
        run.run_search(load_config([], overrides))
    assert not (tmp_path / "nomodel").exists()
