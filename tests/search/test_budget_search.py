"""A search that spends a budget, on real Ray, Optuna and the small demo corpus: synchronous halving, the
finalists' continuation, patience, and the same trials and winner from two runs of one config."""

from __future__ import annotations

import optuna
import pytest

from raysearch_adapters.config import load_config
from raysearch_adapters.results import EPOCHS_SCHEMA, TRIALS_SCHEMA, read_rows
from raysearch_adapters.search import run
from raysearch_adapters.search.searcher import TUNE_TRIAL_ID
from raysearch_adapters.testing import tiny_search_overrides

BUDGET = 40  # eval_every 2, grace 1: a cohort of 4 halved at steps 2 and 4; 2 finalists with 14 steps each


def _search(search_data, root, name: str, *extra: str):
    cfg = load_config([], tiny_search_overrides(*search_data, root, name, f"search.budget_steps={BUDGET}",
                                                "search.num_trials=0", "search.kappa=1000", "train.warmup_steps=1",
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
    return {name: _search(search_data, root, name, *extra) for name, extra in
            (("first", ["search.patience=0"]), ("again", ["search.patience=0"]), ("patient", ["search.patience=1"]))}


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


def test_a_promoted_trial_continues_where_it_paused(budget_runs):
    """A finalist paused at each rung until the others reached it, then resumed from that checkpoint: its step
    counter and evaluation index go on (no step is trained twice), its learning rate stays the horizon-free
    schedule's, and its process-local clock restarted (it really was paused and resumed)."""
    _, trials, epochs = budget_runs["first"]
    for t, rows in zip(trials, epochs):
        if t["status"] != "COMPLETE":
            continue
        assert [e["eval_index"] for e in rows] == list(range(1, len(rows) + 1))
        assert all(e["lr"] == pytest.approx(t["lr"]) for e in rows)  # warm-up of 1 step, then constant
        assert any(later["time_s"] < earlier["time_s"] for earlier, later in zip(rows, rows[1:]))


def test_two_runs_of_one_config_give_the_same_trials_evaluations_and_winner(budget_runs):
    (s1, t1, e1), (s2, t2, e2) = budget_runs["first"], budget_runs["again"]
    keys = ("type", "dim", "blocks", "position", "lr", "replay", "distill_weight", "status", "step", "best_step",
            "dev_wer_new", "dev_wer_original", "degradation")
    assert [[t[k] for k in keys] for t in t1] == [[t[k] for k in keys] for t in t2]
    evals = ("step", "eval_index", "dev_wer_new", "dev_wer_original", "degradation", "lr")
    assert [[[e[k] for k in evals] for e in rows] for rows in e1] == [[[e[k] for k in evals] for e in rows] for rows in e2]
    assert [[e["train_loss"] for e in rows] for rows in e1] == [[pytest.approx(e["train_loss"], rel=1e-6) for e in rows]
                                                               for rows in e2]
    index = {t["trial_id"]: i for i, t in enumerate(t1)}
    assert index[s1["winner"]["trial_id"]] == {t["trial_id"]: i for i, t in enumerate(t2)}[s2["winner"]["trial_id"]]
    assert s1["winner"]["test"] == s2["winner"]["test"]


def test_patience_stops_a_finalist_that_no_longer_improves(budget_runs):
    """With patience 1 a finalist ends at its first evaluation that is not better than its best one, so the
    search spends less than its budget; the finalist still counts as complete (it trained all it could use)."""
    summary, trials, epochs = budget_runs["patient"]
    finalists = [(t, rows) for t, rows in zip(trials, epochs) if t["status"] == "COMPLETE"]
    assert finalists and summary["budget"]["spent"] <= BUDGET
    for t, rows in finalists:
        last = rows[-1]
        if t["step"] < 18:  # it stopped early: the evaluation before was its best, this one no better
            assert last["eval_index"] - t["best_step"] // 2 == 1
    assert any(t["step"] < 18 for t, _ in finalists), "no finalist stopped on patience"
