"""Selection on dev: the best feasible trial wins; an infeasible trial with a better new WER never does."""

from __future__ import annotations

from raysearch_adapters.results.select import closest_infeasible, pareto_front, select_winner


def _row(tid, wer, deg, status="COMPLETE"):
    return {"trial_id": tid, "status": status, "dev_wer_new": wer, "degradation": deg}


ROWS = [_row("best-but-infeasible", 10.0, 3.0), _row("feasible", 20.0, 0.5), _row("feasible-worse", 25.0, -0.2),
        _row("pruned-feasible", 18.0, 0.9, "PRUNED"), _row("failed", None, None, "FAIL"),
        _row("running", 5.0, 0.0, "RUNNING")]


def test_winner_is_the_complete_feasible_trial_with_the_best_dev_new_wer():
    # the infeasible 10.0, the unfinished 5.0 and the pruned 18.0 are better on the new domain but not eligible:
    # a winner trained its whole budget (as Optuna's best_trial, which counts COMPLETE trials only)
    assert select_winner(ROWS, limit=1.0)["trial_id"] == "feasible"
    assert select_winner(ROWS, limit=0.6)["trial_id"] == "feasible"
    assert select_winner(ROWS, limit=5.0)["trial_id"] == "best-but-infeasible"


def test_no_winner_when_nothing_is_feasible_and_the_closest_is_reported():
    assert select_winner(ROWS, limit=-1.0) is None
    assert closest_infeasible(ROWS, limit=-1.0)["trial_id"] == "feasible-worse"


def test_pareto_front_is_the_non_dominated_trials():
    front = [r["trial_id"] for r in pareto_front(ROWS)]
    assert front == ["best-but-infeasible", "pruned-feasible", "feasible", "feasible-worse"]
    assert "feasible" not in [r["trial_id"] for r in pareto_front(ROWS + [_row("dominates", 19.0, 0.4)])]


def test_a_tie_goes_to_the_trial_started_first_not_to_the_random_trial_id():
    first, second = {**_row("ffff", 40.0, 0.5), "trial_number": 1}, {**_row("0000", 40.0, 0.5), "trial_number": 2}
    assert select_winner([second, first], limit=1.0)["trial_id"] == "ffff"
    assert closest_infeasible([{**second, "degradation": 3.0}, {**first, "degradation": 3.0}], 1.0)["trial_id"] == "ffff"
