"""The constrained searcher inside real Ray Tune: ASHA stops are PRUNED, raising trials FAIL, constraints set.

The trainable here is a test-only function (no model) so that the Ray/Optuna plumbing
is checked in seconds with predictable metrics; the real trial runs in test_search_e2e.
"""

from __future__ import annotations

import sys

import optuna
import pytest
from ray import cloudpickle, tune

from raysearch_adapters.config import load_config
from raysearch_adapters.results import TRIALS_SCHEMA, read_rows
from raysearch_adapters.search.record import TablesRecorder
from raysearch_adapters.search.searcher import TUNE_TRIAL_ID
from raysearch_adapters.search.tuner import make_scheduler, make_searcher
from raysearch_adapters.train.objective import asha_score
from raysearch_adapters.train.worker import ASHA_METRIC

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules

EVALS = 3


def fake_trial(config):
    """dim 8 raises; otherwise WER falls with dim but degradation = dim / 4: dim 16 is best and infeasible."""
    if config["dim"] == 8:
        raise RuntimeError("deliberate failure for dim 8")
    for i in range(1, EVALS + 1):
        deg = config["dim"] / 4
        wer = 100.0 - 5.0 * config["dim"] + 5.0 / i
        tune.report({"eval_index": i, "step": i, "final": i == EVALS, "train_loss": 1.0, "lr": config["lr"],
                     "dev_wer_new": wer, "dev_wer_original": 10.0 + deg, "degradation": deg, "feasible": deg <= 1.0,
                     "time_s": 0.0, ASHA_METRIC: asha_score(wer, deg, 1.0)})


@pytest.fixture(scope="module")
def searched(ray_session, tmp_path_factory):
    """A 10-trial random search over dim in {1, 2, 8, 16}, one trial at a time, kappa 1."""
    tmp_path = tmp_path_factory.mktemp("fake_search")
    cfg = load_config([], ["search.name=fake", "search.sampler=random", "search.num_trials=10", "search.seed=3",
                           "search.space.dim.choices=[1,2,8,16]", f"train.steps={EVALS}", "train.eval_every=1",
                           "search.asha.grace_period=1", "search.asha.reduction_factor=2", "search.kappa=1.0"])
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    tuner = tune.Tuner(
        tune.with_resources(fake_trial, {"cpu": 0.01}),
        tune_config=tune.TuneConfig(search_alg=make_searcher(cfg, storage), scheduler=make_scheduler(cfg),
                                    num_samples=10, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="tune", verbose=0,
                                  callbacks=[TablesRecorder(str(tmp_path), "fake", {})]))
    tuner.fit()
    rows = {r["trial_id"]: r for r in read_rows(tmp_path / "trials.parquet", TRIALS_SCHEMA)}
    study = optuna.load_study(study_name="fake", storage=storage)
    return rows, {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.trials}, study


def test_states_agree_between_the_table_and_the_study(searched):
    rows, trials, _ = searched
    assert len(rows) == len(trials) == 10
    statuses = {r["status"] for r in rows.values()}
    assert {"PRUNED", "FAIL", "COMPLETE"} <= statuses, statuses  # the seed draws all three outcomes
    for tid, row in rows.items():
        assert trials[tid].state.name == row["status"]


def test_asha_stopped_trials_are_pruned_before_their_last_evaluation(searched):
    rows, trials, _ = searched
    for tid, row in rows.items():
        if row["status"] == "PRUNED":
            assert row["evals"] < EVALS
            assert trials[tid].intermediate_values  # TPE uses a pruned trial's last reported value
        if row["status"] == "COMPLETE":
            assert row["evals"] == EVALS


def test_failed_trials_are_fail_with_their_error_and_the_search_finished(searched):
    rows, trials, _ = searched
    failed = [r for r in rows.values() if r["status"] == "FAIL"]
    assert failed and all(r["dim"] == 8 for r in failed)
    assert all("deliberate failure for dim 8" in r["error"] for r in failed)


def test_constraint_is_degradation_minus_kappa(searched):
    rows, trials, _ = searched
    for tid, row in rows.items():
        if row["status"] != "FAIL":
            assert trials[tid].system_attrs["constraints:degradation"] == row["degradation"] - 1.0
            assert trials[tid].user_attrs["degradation"] == row["degradation"]
            assert trials[tid].user_attrs["feasible"] == (row["degradation"] <= 1.0)


def test_the_study_best_trial_is_the_best_feasible_one(searched):
    rows, trials, study = searched
    complete = [r for r in rows.values() if r["status"] == "COMPLETE"]
    measured = [r for r in rows.values() if r["status"] != "FAIL"]
    best_feasible = min((r for r in complete if r["feasible"]), key=lambda r: r["dev_wer_new"])
    # an infeasible trial measured a better WER (ASHA may have stopped it early: it ranks infeasible last)
    assert any(not r["feasible"] and r["dev_wer_new"] < best_feasible["dev_wer_new"] for r in measured)
    assert study.best_trial.user_attrs[TUNE_TRIAL_ID] == best_feasible["trial_id"]


def test_asha_ranks_an_infeasible_trial_behind_a_feasible_one_whatever_its_wer():
    """Two trials at the first rung: the infeasible one learns the new domain faster but is stopped."""
    from ray.tune.schedulers import TrialScheduler

    cfg = load_config([], [f"train.steps={EVALS}", "train.eval_every=1", "search.asha.grace_period=1",
                           "search.asha.reduction_factor=2", "search.kappa=1.0"])
    scheduler = make_scheduler(cfg)

    class FakeTrial:  # what ASHA reads of a trial
        def __init__(self, trial_id):
            self.trial_id = trial_id

    careful, reckless = FakeTrial("careful"), FakeTrial("reckless")
    for t in (careful, reckless):
        scheduler.on_trial_add(None, t)

    def result(wer, deg):
        return {"eval_index": 1, "dev_wer_new": wer, "degradation": deg, ASHA_METRIC: asha_score(wer, deg, 1.0)}

    assert scheduler.on_trial_result(None, careful, result(90.0, 0.5)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, reckless, result(60.0, 8.0)) == TrialScheduler.STOP
