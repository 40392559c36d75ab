"""Selection on dev: the best feasible trial wins; an infeasible trial with a better new WER never does."""

from __future__ import annotations

from raysearch_adapters.results.select import (LOOP_PRICE, closest_infeasible, pareto_front, select_winner, violation,
                                              within_limits)


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


def test_a_trial_that_added_a_looping_utterance_wins_only_when_loops_are_not_held():
    loops = {**_row("loops", 15.0, 0.2), "new_loops": 1}
    rows = ROWS + [loops]
    assert select_winner(rows, limit=1.0)["trial_id"] == "loops"  # max_new_loops None: counted, not held
    assert select_winner(rows, limit=1.0, max_new_loops=0)["trial_id"] == "feasible"
    assert select_winner(rows, limit=1.0, max_new_loops=1)["trial_id"] == "loops"
    assert within_limits(loops, 1.0) and not within_limits(loops, 1.0, 0) and within_limits(loops, 1.0, 1)
    # how far from feasible: degradation over the limit plus LOOP_PRICE per loop over the allowed count
    assert violation(loops, 1.0, 0) == LOOP_PRICE == 1.0
    assert violation({**loops, "degradation": 1.5, "new_loops": 3}, 1.0, 1) == 0.5 + 2 * LOOP_PRICE
    assert violation({**loops, "degradation": 1.5, "new_loops": 3}, 1.0) == 0.5  # loops not held
    # nothing feasible: the closest is the least far from feasible, a loop weighing one point over kappa
    over = [{**_row("over-by-0.8", 12.0, 1.8)}, {**loops, "trial_id": "one-loop"}]
    assert closest_infeasible(over, 1.0, 0)["trial_id"] == "over-by-0.8"
    assert closest_infeasible([over[0], {**over[0], "trial_id": "over-by-1.2", "degradation": 2.2}, over[1]],
                              1.0, 0)["trial_id"] == "over-by-0.8"
    assert closest_infeasible([{**over[0], "degradation": 2.5}, over[1]], 1.0, 0)["trial_id"] == "one-loop"
