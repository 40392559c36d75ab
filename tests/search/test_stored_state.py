"""Old checkpoints go, and Optuna learns outcomes, only once the experiment state a resume reads records them."""

import shutil
import warnings
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pyarrow.fs
import pytest
from ray import tune
from ray.train._internal.storage import StorageContext

from raysearch_adapters.config import load_config
from raysearch_adapters.search.searcher import TUNE_TRIAL_ID, tell_finished_trials
from raysearch_adapters.search.stored_state import StoredStateWatcher, delete_older_checkpoints, keep_only_checkpoint
from raysearch_adapters.search.tuner import make_searcher, objective


def _checkpoint(trial_dir, index):
    path = trial_dir / f"checkpoint_{index:06d}"
    path.mkdir(parents=True)
    (path / "best_adapter.pt").write_bytes(b"adapter %d" % index)
    return tune.Checkpoint.from_directory(str(path))


def _snapshot(storage, text, copy):
    """The driver saves its state to the staging folder; ``copy``: the background copy to storage is done."""
    staging = storage.experiment_driver_staging_path
    time.sleep(0.05)  # file times come from a coarse clock
    name = "experiment_state-2026-12-02_00-00-00.json"
    staging_file = Path(staging, name)
    staging_file.parent.mkdir(parents=True, exist_ok=True)
    staging_file.write_text(text)
    if copy:
        shutil.copyfile(staging_file, f"{storage.experiment_fs_path}/{name}")


def test_a_checkpoint_the_stored_state_may_still_name_is_kept_until_the_state_on_storage_names_a_newer_one(
        ray_session, tmp_path):
    storage = StorageContext(storage_path=str(tmp_path / "results"), experiment_dir_name="tune",
                             trial_dir_name="trial_a")
    trial_dir = tmp_path / "results" / "tune" / "trial_a"
    trial = SimpleNamespace(trial_id="a", storage=storage)
    pruner = StoredStateWatcher()
    first = _checkpoint(trial_dir, 0)
    pruner.on_checkpoint(0, [], trial, first)
    _snapshot(storage, "names checkpoint_000000", copy=True)
    second = _checkpoint(trial_dir, 1)
    pruner.on_checkpoint(1, [], trial, second)

    # The state on storage names checkpoint_000000; a resume now would ask for it (Tune's num_to_keep=1
    # deleted it here, and a driver killed now left a search whose trial could not be resumed).
    assert pruner.check()[0] == [] and (trial_dir / "checkpoint_000000").is_dir()
    _snapshot(storage, "names checkpoint_000001", copy=False)  # saved, still being copied
    assert pruner.check()[0] == [] and (trial_dir / "checkpoint_000000").is_dir()

    _snapshot(storage, "names checkpoint_000001", copy=True)
    assert pruner.check()[0] == [first.path]
    assert sorted(p.name for p in trial_dir.iterdir()) == ["checkpoint_000001"]
    assert (trial_dir / "checkpoint_000001" / "best_adapter.pt").read_bytes() == b"adapter 1"
    assert pruner.check()[0] == []  # nothing left waiting


def test_only_checkpoint_folders_older_than_the_named_one_go(tmp_path):
    trial_dir = tmp_path / "trial"
    for index in (0, 3, 7, 12):
        _checkpoint(trial_dir, index)
    (trial_dir / "result.json").write_text("{}")
    (trial_dir / "checkpoint_notes").mkdir()
    deleted = delete_older_checkpoints(pyarrow.fs.LocalFileSystem(), str(trial_dir / "checkpoint_000007"))
    assert sorted(deleted) == [str(trial_dir / "checkpoint_000000"), str(trial_dir / "checkpoint_000003")]
    assert sorted(p.name for p in trial_dir.iterdir()) == ["checkpoint_000007", "checkpoint_000012",
                                                           "checkpoint_notes", "result.json"]


def test_after_the_search_a_killed_runs_newer_checkpoint_goes_too(tmp_path):
    # CI's sequence: the killed driver's trial wrote checkpoint_000001 after the last stored state; the
    # resumed trial reran from scratch and ASHA stopped it at its first evaluation (checkpoint_000000).
    trial_dir = tmp_path / "trial"
    for index in (0, 1):
        _checkpoint(trial_dir, index)
    (trial_dir / "result.json").write_text("{}")
    fs = pyarrow.fs.LocalFileSystem()
    assert delete_older_checkpoints(fs, str(trial_dir / "checkpoint_000000")) == []  # while it runs: kept
    assert keep_only_checkpoint(fs, str(trial_dir), str(trial_dir / "checkpoint_000000")) == [
        str(trial_dir / "checkpoint_000001")]
    assert sorted(p.name for p in trial_dir.iterdir()) == ["checkpoint_000000", "result.json"]
    # a trial the stored state names no checkpoint of keeps none
    assert keep_only_checkpoint(fs, str(trial_dir), None) == [str(trial_dir / "checkpoint_000000")]
    assert keep_only_checkpoint(fs, str(tmp_path / "never-started"), None) == []


def _running_searcher(tmp_path, name):
    cfg = load_config([], [f"search.name={name}", "search.num_trials=2", "search.start_points=[]", "search.kappa=1.0"])
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = make_searcher(cfg, storage)
    assert searcher.suggest("a") is not None
    return cfg, storage, searcher


def _state(storage, name):
    (trial,) = optuna.load_study(study_name=name, storage=storage).trials
    return trial.state.name


PRUNED_AT_2 = {"dev_wer_new": 60.0, "degradation": 0.5, "final": False, "training_iteration": 2, "best_step": 20}
COMPLETE_AT_4 = {"dev_wer_new": 55.0, "degradation": 0.7, "final": True, "training_iteration": 4, "best_step": 40}


def test_optuna_learns_an_outcome_only_once_the_state_on_storage_records_the_trial_finished(ray_session, tmp_path):
    _, storage, searcher = _running_searcher(tmp_path, "durable")
    tune_storage = StorageContext(storage_path=str(tmp_path / "results"), experiment_dir_name="tune",
                                  trial_dir_name="trial_a")
    watcher = StoredStateWatcher(searcher)
    watcher.on_trial_start(0, [], SimpleNamespace(trial_id="a", storage=tune_storage))
    _snapshot(tune_storage, "trial a RUNNING", copy=True)
    searcher.on_trial_complete("a", result=PRUNED_AT_2)  # ASHA stops it
    # A driver killed now resumes from "trial a RUNNING" and runs it again: Optuna must not know yet.
    assert watcher.check() == ([], []) and _state(storage, "durable") == "RUNNING"
    _snapshot(tune_storage, "trial a TERMINATED", copy=False)  # saved, still being copied
    assert watcher.check() == ([], []) and _state(storage, "durable") == "RUNNING"
    _snapshot(tune_storage, "trial a TERMINATED", copy=True)
    assert watcher.check() == ([], ["a"])
    (trial,) = optuna.load_study(study_name="durable", storage=storage).trials
    assert trial.state.name == "PRUNED" and trial.intermediate_values == {2: 60.0}
    assert trial.system_attrs["constraints:degradation"] == pytest.approx(-0.5) and trial.user_attrs["best_step"] == 20
    assert not searcher.has_untold() and watcher.check() == ([], [])


def test_a_driver_killed_before_the_state_was_stored_leaves_the_outcome_to_the_rerun(ray_session, tmp_path):
    """CI's failure: told PRUNED, killed, resumed from the older state, the rerun COMPLETE: study PRUNED, tables
    COMPLETE. Now the study has nothing from the first run and takes the rerun's outcome."""
    cfg, storage, searcher = _running_searcher(tmp_path, "rerun")
    stored = tmp_path / "stored_searcher"
    stored.mkdir()
    searcher.save(str(stored / "searcher.pkl"))  # the state on storage: trial a running
    searcher.on_trial_complete("a", result=PRUNED_AT_2)  # noted; the driver dies before the state is copied

    resumed = make_searcher(cfg, storage)
    resumed.restore(str(stored / "searcher.pkl"))
    assert _state(storage, "rerun") == "RUNNING"
    resumed.on_trial_complete("a", result=COMPLETE_AT_4)  # the rerun (ASHA's restored rungs let it finish)
    assert resumed.tell_recorded(float("inf")) == ["a"]
    (trial,) = optuna.load_study(study_name="rerun", storage=storage).trials
    assert trial.state.name == "COMPLETE" and trial.value == 55.0 and trial.user_attrs["best_step"] == 40


def test_outcomes_noted_in_the_stored_searcher_state_are_told_on_resume(ray_session, tmp_path):
    """Killed after the state recording the trial finished was copied, before the tell: Tune will not run it
    again, so the restored searcher tells what it had noted."""
    cfg, storage, searcher = _running_searcher(tmp_path, "noted")
    searcher.on_trial_complete("a", result=COMPLETE_AT_4)
    stored = tmp_path / "stored_searcher"
    stored.mkdir()
    searcher.save(str(stored / "searcher.pkl"))
    assert _state(storage, "noted") == "RUNNING"
    make_searcher(cfg, storage).restore(str(stored / "searcher.pkl"))
    assert _state(storage, "noted") == "COMPLETE"


def test_trials_the_stored_state_has_finished_are_told_after_the_search(tmp_path):
    """What the run noted last (or lost with a cut-off copy) is told from the stored Tune state after fit."""
    cfg, storage, searcher = _running_searcher(tmp_path, "after")
    assert searcher.suggest("b") is not None and searcher.suggest("c") is not None
    searcher.on_trial_complete("c", result=COMPLETE_AT_4)
    searcher.tell_recorded(float("inf"))
    study = optuna.load_study(study_name="after", storage=storage)
    trials = [SimpleNamespace(trial_id="a", status="TERMINATED", last_result=PRUNED_AT_2),
              SimpleNamespace(trial_id="b", status="ERROR", last_result=COMPLETE_AT_4),
              SimpleNamespace(trial_id="c", status="TERMINATED", last_result=PRUNED_AT_2),  # told already
              SimpleNamespace(trial_id="d", status="TERMINATED", last_result=PRUNED_AT_2)]  # not this study's
    assert tell_finished_trials(study, trials, objective(cfg), 1.0) == ["a", "b"]
    states = {t.user_attrs[TUNE_TRIAL_ID]: t.state.name for t in study.get_trials()}
    assert states == {"a": "PRUNED", "b": "FAIL", "c": "COMPLETE"}


def test_an_outcome_told_from_the_stored_state_after_a_stop_is_not_told_again_on_resume(tmp_path, caplog):
    """Ctrl-C: the run ends, the outcome it noted last is told from the stored state, and the stored searcher
    state (saved before) still holds it as noted: the resumed searcher skips it quietly."""
    cfg, storage, searcher = _running_searcher(tmp_path, "stopped")
    searcher.on_trial_complete("a", result=PRUNED_AT_2)
    stored = tmp_path / "stored_searcher"
    stored.mkdir()
    searcher.save(str(stored / "searcher.pkl"))
    study = optuna.load_study(study_name="stopped", storage=storage)
    finished = [SimpleNamespace(trial_id="a", status="TERMINATED", last_result=PRUNED_AT_2)]
    assert tell_finished_trials(study, finished, objective(cfg), 1.0) == ["a"]
    resumed = make_searcher(cfg, storage)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "constraint already set" from Optuna
        resumed.restore(str(stored / "searcher.pkl"))
    assert "already finished" not in caplog.text and _state(storage, "stopped") == "PRUNED"
    assert not resumed.has_untold()
