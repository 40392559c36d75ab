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
from raysearch_adapters.search.searcher import TUNE_TRIAL_ID, tell_finished_trials, tell_outcome
from raysearch_adapters.search.stored_state import StoredStateWatcher
from raysearch_adapters.search.tuner import make_scheduler, make_searcher, objective
from raysearch_adapters.train.objective import asha_score
from raysearch_adapters.train.worker import ASHA_METRIC

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules

EVALS = 3


def fake_trial(config):
    """dim 8 raises; otherwise WER falls with dim and degradation rises: dim 16 is best and far infeasible."""
    if config["dim"] == 8:
        raise RuntimeError("deliberate failure for dim 8")
    for i in range(1, EVALS + 1):
        deg = config["dim"] / 4 if config["dim"] < 16 else 12.0
        wer = 100.0 - 5.0 * config["dim"] + 5.0 / i
        tune.report({"eval_index": i, "step": i, "final": i == EVALS, "train_loss": 1.0, "lr": config["lr"],
                     "dev_wer_new": wer, "dev_wer_original": 10.0 + deg, "degradation": deg, "feasible": deg <= 1.0,
                     "time_s": 0.0, ASHA_METRIC: asha_score(wer, deg, 1.0)})


@pytest.fixture(scope="module")
def searched(ray_session, tmp_path_factory):
    """A 10-trial random search over dim in {1, 2, 8, 16}, one trial at a time, kappa 1."""
    tmp_path = tmp_path_factory.mktemp("fake_search")
    cfg = load_config([], ["search.name=fake", "search.sampler=random", "search.budget_steps=0", "search.num_trials=10",
                           "search.seed=3",
                           # every outcome, whatever the random draws: infeasible-but-best, failing, feasible
                           "search.start_points=[{dim: 16}, {dim: 8}, {dim: 2}, {dim: 1}]",
                           "search.space.dim.choices=[1,2,8,16]", f"train.steps={EVALS}", "train.eval_every=1",
                           "search.asha.grace_period=1", "search.asha.reduction_factor=2", "search.kappa=1.0"])
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = make_searcher(cfg, storage)
    tuner = tune.Tuner(
        tune.with_resources(fake_trial, {"cpu": 0.01}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(cfg),
                                    num_samples=10, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="tune", verbose=0,
                                  callbacks=[TablesRecorder(str(tmp_path), "fake", {}), StoredStateWatcher(searcher)]))
    tuner.fit()
    rows = {r["trial_id"]: r for r in read_rows(tmp_path / "trials.parquet", TRIALS_SCHEMA)}
    study = optuna.load_study(study_name="fake", storage=storage)
    # as the search does: what the run noted last is told from the state on storage
    tell_finished_trials(study, tune.ExperimentAnalysis(str(tmp_path / "tune")).trials, objective(cfg), 1.0)
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


class _RungTrial:  # what ASHA reads of a trial
    def __init__(self, trial_id):
        self.trial_id = trial_id


def _first_rung(*trial_ids):
    """ASHA as a search makes it (kappa 1), and trials it has been told about, for first-rung decisions."""
    cfg = load_config([], ["search.budget_steps=0", "search.num_trials=4", f"train.steps={EVALS}", "train.eval_every=1",
                           "search.asha.grace_period=1",
                           "search.asha.reduction_factor=2", "search.kappa=1.0"])
    scheduler = make_scheduler(cfg)
    trials = [_RungTrial(t) for t in trial_ids]
    for t in trials:
        scheduler.on_trial_add(None, t)

    def decide(trial, wer, deg):
        result = {"eval_index": 1, "dev_wer_new": wer, "degradation": deg, ASHA_METRIC: asha_score(wer, deg, 1.0)}
        return scheduler.on_trial_result(None, trial, result)

    return trials, decide


def test_asha_ranks_a_trial_wrecking_the_original_domain_behind_a_feasible_one_whatever_its_wer():
    """Two trials at the first rung: the reckless one learns the new domain faster but is stopped."""
    from ray.tune.schedulers import TrialScheduler

    (careful, reckless), decide = _first_rung("careful", "reckless")
    assert decide(careful, 90.0, 0.5) == TrialScheduler.CONTINUE
    assert decide(reckless, 60.0, 8.0) == TrialScheduler.STOP


def test_asha_keeps_a_learner_slightly_over_the_limit_before_a_trial_that_learns_nothing():
    """At an early (noisy) evaluation a trial learning the new domain sits 0.5 over the limit; it continues."""
    from ray.tune.schedulers import TrialScheduler

    (idle, learner, late), decide = _first_rung("idle", "learner", "late idle")
    assert decide(idle, 99.0, 0.2) == TrialScheduler.CONTINUE
    assert decide(learner, 90.0, 1.5) == TrialScheduler.CONTINUE
    assert decide(late, 99.5, 0.1) == TrialScheduler.STOP


def test_a_result_for_a_trial_the_searcher_never_suggested_is_not_told(tmp_path, caplog):
    """E.g. a trial Tune restored that the restored searcher has no Optuna trial for: a warning, no crash."""
    cfg = load_config([], ["search.name=unknown", "search.num_trials=2", "search.start_points=[]"])
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = make_searcher(cfg, storage)
    searcher.on_trial_complete("never-suggested", {"dev_wer_new": 50.0, "degradation": 0.0, "final": True})
    assert searcher.tell_recorded(float("inf")) == ["never-suggested"]
    assert "never-suggested" in caplog.text and "not told" in caplog.text
    assert optuna.load_study(study_name="unknown", storage=storage).trials == []


def test_start_points_are_suggested_first_and_the_rest_is_sampled(tmp_path):
    cfg = load_config([], ["search.name=start", "search.space.dim=[4,8,16]", "search.space.distill_weight.allow_zero=true",
                           "search.start_points=[{dim: 16, distill_weight: 0.0}, {dim: 4, lr: 0.002}]"])
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = make_searcher(cfg, storage)
    first, second, third = (searcher.suggest(f"t{i}") for i in range(3))
    assert first["dim"] == 16 and first["distill_weight"] == 0.0 and first["distill_weight_on"] is False
    assert cfg.search.space.lr.low <= first["lr"] <= cfg.search.space.lr.high  # not given: sampled
    assert second["dim"] == 4 and second["lr"] == 0.002 and second["distill_weight"] > 0
    assert third["dim"] in (4, 8, 16)
    # a resumed study does not queue them again
    again = make_searcher(cfg, storage)
    assert len([t for t in optuna.load_study(study_name="start", storage=storage).trials
                if t.state == optuna.trial.TrialState.WAITING]) == 0
    assert again.suggest("t3")["dim"] in (4, 8, 16)


@pytest.mark.parametrize("point, match", [
    ("{dim: 5}", r"search.start_points\[0\].dim: got 5; allowed: one of search.space.dim.choices"),
    ("{dropout: 0.1}", r"search.start_points\[0\].dropout: .*is not searched"),
    ("{lr: 0.5}", r"search.start_points\[0\].lr: got 0.5; must be in search.space.lr's range"),
    ("{colour: 3}", r"search.start_points\[0\].colour: got 3; not a searched parameter"),
    ("{dim: abc}", r"search.start_points\[0\].dim: got 'abc'"),
])
def test_a_bad_start_point_names_the_key(point, match):
    from raysearch_adapters.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_config([], [f"search.start_points=[{point}]"])


def test_the_demos_start_point_is_the_demo_configs_alone():
    """The demo's hand-picked point is in the packaged demo config, which a command given no config file loads;
    the defaults have none, so another config never inherits it, and the demo's point is checked like any other."""
    from raysearch_adapters.commands.args import load_from_args
    from raysearch_adapters.config import DEMO_CONFIG, ConfigError

    demo = [{"dim": 64, "blocks": "all", "position": "post", "lr": 3e-3, "replay": 0.0, "distill_weight": 30.0}]
    assert load_config([DEMO_CONFIG]).search.start_points == demo
    assert load_from_args(["search.num_trials=4"]).search.start_points == demo
    assert load_config([]).search.start_points == []
    with pytest.raises(ConfigError, match=r"^search\.start_points\[0\]\.lr: got 0\.003; must be in search\.space\.lr's"):
        load_from_args(["search.space.lr={low: 1.0e-5, high: 1.0e-3, log: true}"])


def test_a_trial_that_added_a_looping_utterance_is_infeasible_for_optuna_with_max_new_loops_0():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    results = {"loops": {"final": True, "dev_wer_new": 30.0, "degradation": 0.1, "new_loops": 1},
               "clean": {"final": True, "dev_wer_new": 35.0, "degradation": 0.4, "new_loops": 0}}
    for name, result in results.items():
        trial = study.ask()
        trial.set_user_attr(TUNE_TRIAL_ID, name)
        tell_outcome(study, trial, result, False, "dev_wer_new", 1.0, max_new_loops=0)
    loops, clean = study.trials
    assert loops.system_attrs["constraints:new_loops"] == 1.0 and clean.system_attrs["constraints:new_loops"] == 0.0
    assert loops.system_attrs["constraints:degradation"] == pytest.approx(0.1 - 1.0)
    assert study.best_trial.user_attrs[TUNE_TRIAL_ID] == "clean"  # the looping trial's better WER does not count
    # ASHA prices the loop as one point of degradation over kappa: 10 points of score
    assert asha_score(30.0, 0.1, 1.0, 1, 0) == 40.0 and asha_score(30.0, 0.1, 1.0, 1, None) == 30.0
    # loops counted, not held to a limit: no such constraint
    unheld = optuna.create_study()
    trial = unheld.ask()
    tell_outcome(unheld, trial, results["loops"], False, "dev_wer_new", 1.0)
    assert "constraints:new_loops" not in unheld.trials[0].system_attrs
