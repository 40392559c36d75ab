"""A search that spends a budget, on real Ray, Optuna and the small demo corpus: synchronous halving, the
finalists' continuation, patience, and the same trials and winner from two runs of one config."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from builders import tiny_search_overrides
from raysearch_adapters.config import load_config
from raysearch_adapters.results import EPOCHS_SCHEMA, TRIALS_SCHEMA, read_rows
from raysearch_adapters.search import run
from raysearch_adapters.search.searcher import TUNE_TRIAL_ID

BUDGET = 40  # eval_every 2, grace 1: a cohort of 4 halved at steps 2 and 4; 2 finalists with 14 steps each


def _search(search_data, root, name: str, *extra: str):
    cfg = load_config([], tiny_search_overrides(*search_data, root, name, f"search.budget_steps={BUDGET}",
                                                "search.num_trials=0", "search.kappa=1000", "train.warmup_steps=1",
                                                "train.lr_schedule=constant",
                                                "search.space.lr={low: 0.001, high: 0.01, log: true}", *extra))
    summary = run.run_search(cfg)
    out = root / name
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")
    order = [t.user_attrs[TUNE_TRIAL_ID] for t in sorted(study.trials, key=lambda t: t.number)]
    trials = {r["trial_id"]: r for r in read_rows(out / "trials.parquet", TRIALS_SCHEMA)}
    epochs = read_rows(out / "epochs.parquet", EPOCHS_SCHEMA)
    return summary, [trials[t] for t in order], [[e for e in epochs if e["trial_id"] == t] for t in order]


@pytest.fixture(scope="module")
def budget_runs(ray_session, search_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    runs = (("first", ["search.patience=0"]), ("again", ["search.patience=0"]),
            ("patient", ["search.patience=1", "train.lr_schedule=wsd", "train.decay_steps=4"]))
    return {name: _search(search_data, root, name, *extra) for name, extra in runs}


def test_the_budget_is_spent_exactly_and_never_exceeded(budget_runs):
    summary, trials, epochs = budget_runs["first"]
    assert sum(t["step"] for t in trials) == BUDGET == summary["budget"]["spent"] == summary["budget"]["steps"]
    for t, rows in zip(trials, epochs):  # every step a trial trained is in its evaluations: none is counted twice
        assert [e["step"] for e in rows] == list(range(2, t["step"] + 1, 2))
    # 4 trials to step 2; the best 2 of them on to step 4, where they are the finalists; 14 steps more each
    assert sorted((t["status"], t["step"]) for t in trials) == [("COMPLETE", 18), ("COMPLETE", 18),
                                                                ("PRUNED", 2), ("PRUNED", 2)]
    assert summary["budget"]["milestones"] == [2, 4] and summary["budget"]["cohort"] == 4
    assert summary["winner"]["trial_id"] in {t["trial_id"] for t in trials if t["status"] == "COMPLETE"}


def _tune_results(summary: dict, trial_id: str) -> list:
    """Ray Tune's own record of a trial's results (its result.json), in order."""
    (path,) = Path(summary["paths"]["tune_storage"]).glob(f"*/*_{trial_id}_*/result.json")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_promoted_trial_continues_where_it_paused(budget_runs):
    """A finalist paused at each rung until the others reached it, then resumed from that checkpoint: its step
    counter and evaluation index go on (no step is trained twice) and its learning rate stays the horizon-free
    schedule's; Tune's record shows it restored (its iterations since restore start again)."""
    summary, trials, epochs = budget_runs["first"]
    finalists = [(t, rows) for t, rows in zip(trials, epochs) if t["status"] == "COMPLETE"]
    restored = 0
    for t, rows in finalists:
        assert [e["eval_index"] for e in rows] == list(range(1, len(rows) + 1))
        assert all(e["lr"] == pytest.approx(rows[0]["lr"]) for e in rows)  # warm-up of 1 step, then constant
        results = _tune_results(summary, t["trial_id"])
        assert [r["step"] for r in results] == [e["step"] for e in rows]  # each step once, in order
        restored += sum(r["iterations_since_restore"] < r["training_iteration"] for r in results)
    # the last trial to reach a rung goes on without a pause; the others waited there and were resumed
    assert restored > 0


def test_two_runs_of_one_config_give_the_same_trials_evaluations_and_winner(budget_runs):
    (s1, t1, e1), (s2, t2, e2) = budget_runs["first"], budget_runs["again"]
    keys = ("type", "dim", "blocks", "position", "lr", "replay", "distill_weight", "status", "step", "best_step",
            "dev_wer_new", "dev_wer_original", "degradation")
    assert [[t[k] for k in keys] for t in t1] == [[t[k] for k in keys] for t in t2]
    evals = ("step", "eval_index", "dev_wer_new", "dev_wer_original", "degradation", "lr")
    assert [[[e[k] for k in evals] for e in rows] for rows in e1] == [[[e[k] for k in evals] for e in rows]
                                                                      for rows in e2]
    assert [[e["train_loss"] for e in rows] for rows in e1] == [[pytest.approx(e["train_loss"], rel=1e-6) for e in rows]
                                                               for rows in e2]
    index = {t["trial_id"]: i for i, t in enumerate(t1)}
    assert index[s1["winner"]["trial_id"]] == {t["trial_id"]: i for i, t in enumerate(t2)}[s2["winner"]["trial_id"]]
    assert s1["winner"]["test"] == s2["winner"]["test"]


def test_patience_cools_down_and_stops_a_finalist_that_no_longer_improves(budget_runs):
    """Patience 1 with the wsd schedule: a trial whose evaluation at step s is no better than its best cools
    down (the rate falls linearly to 0 over train.decay_steps = 4 steps) and ends at s + 4, before its share
    is spent; it still counts as complete. The search then spends less than its budget."""
    summary, trials, epochs = budget_runs["patient"]
    finalists = [(t, rows) for t, rows in zip(trials, epochs) if t["status"] == "COMPLETE"]
    stopped = [(t, rows) for t, rows in finalists if t["step"] < 18]
    assert stopped, "no finalist stopped on patience"
    assert summary["budget"]["spent"] < BUDGET
    for t, rows in stopped:
        stall = rows[-3]
        assert stall["eval_index"] - 1 >= 1 and t["best_step"] < stall["step"] and t["step"] == stall["step"] + 4
        # each report's rate is its last step's: s-1 at the peak, s+1 at 3/4 of it, s+3 at 1/4
        assert [r["lr"] for r in rows[-3:]] == [pytest.approx(t["lr"] * f) for f in (1.0, 0.75, 0.25)]


def test_a_killed_budgeted_search_resumes_to_the_same_trials_and_winner(ray_session, search_data, budget_runs,
                                                                          tmp_path):
    """SIGKILL the driver once a trial has ended, then --resume: the halving's state comes back with the
    experiment snapshot (trials waiting at a rung wait again, decisions already taken stand), every trial is
    counted once in the tables and the study, the budget holds, and the search ends as the uninterrupted one."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from test_search_e2e import _finished, _wait, assert_study_equals_tables

    overrides = tiny_search_overrides(*search_data, tmp_path, "killed", f"search.budget_steps={BUDGET}",
                                      "search.num_trials=0", "search.kappa=1000", "train.warmup_steps=1",
                                      "train.lr_schedule=constant", "search.patience=0",
                                      "search.space.lr={low: 0.001, high: 0.01, log: true}")
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "raysearch_adapters", "search", *overrides], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    out = tmp_path / "killed"
    _wait(lambda: _finished(out) >= 1, driver)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=120)
    assert not (out / "summary.json").exists()
    from ray import tune

    # killed mid-search: the snapshot it left has trials still to train (waiting at a rung, or finalists)
    assert {t.status for t in tune.ExperimentAnalysis(str(out / "tune")).trials} - {"TERMINATED"}
    summary = run.run_search(run.resumed_config(load_config([], overrides), [], overrides), resume=True)
    rows = assert_study_equals_tables(out, "killed", 1000.0)
    assert len(rows) == 4 and sum(r["step"] for r in rows) <= BUDGET
    _, first, _ = budget_runs["first"]
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{out / 'optuna.db'}")
    by_id = {r["trial_id"]: r for r in rows}
    resumed = [by_id[t.user_attrs[TUNE_TRIAL_ID]] for t in sorted(study.trials, key=lambda t: t.number)]
    keys = ("dim", "blocks", "position", "lr", "replay", "distill_weight", "status", "step", "dev_wer_new")
    assert [[t[k] for k in keys] for t in resumed] == [[t[k] for k in keys] for t in first]
    assert json.loads((out / "summary.json").read_text())["budget"]["spent"] == summary["budget"]["spent"] == BUDGET
