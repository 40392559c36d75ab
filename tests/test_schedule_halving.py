"""The learning-rate schedules and the budget's halving plan, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from raysearch_adapters.halving import HalvingError, halving_plan
from raysearch_adapters.schedule import lr_factor


@pytest.mark.parametrize("schedule", ["constant", "inverse_sqrt", "cosine"])
def test_every_schedule_warms_up_linearly(schedule):
    assert [lr_factor(schedule, s, 4, 100) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_constant_and_inverse_sqrt_do_not_depend_on_the_horizon_and_cosine_does():
    for step in (4, 10, 99, 5000):
        assert lr_factor("constant", step, 4, 100) == lr_factor("constant", step, 4, 10**6) == 1.0
        assert lr_factor("inverse_sqrt", step, 4, 100) == lr_factor("inverse_sqrt", step, 4, 10**6)
    # inverse square root: sqrt(warmup / (step + 1)), 1 right after the warm-up
    assert lr_factor("inverse_sqrt", 3, 4, 0) == 1.0
    assert lr_factor("inverse_sqrt", 15, 4, 0) == pytest.approx(0.5)
    assert lr_factor("inverse_sqrt", 99, 4, 0) == pytest.approx(0.2)
    # cosine: half way from the end of the warm-up (4) to the horizon (104) is 0.5; at and past it, 0
    assert lr_factor("cosine", 54, 4, 104) == pytest.approx(0.5)
    assert lr_factor("cosine", 29, 4, 104) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor("cosine", 104, 4, 104) == pytest.approx(0.0) and lr_factor("cosine", 200, 4, 104) == 0.0
    assert lr_factor("cosine", 54, 4, 204) != lr_factor("cosine", 54, 4, 104)


def test_the_demo_budget_halves_eight_trials_and_gives_each_finalist_2400_steps():
    plan = halving_plan(8000, grace=200, eta=2, finalists=2, eval_every=200)
    # 8 x 200 + 4 x (400 - 200) + 2 x (800 - 400) = 3200 <= half the budget; 9 trials would cost
    # 9 x 200 + 5 x 200 + 3 x 400 + 2 x 800 = 5600 > 4000.
    assert (plan.cohort, plan.milestones, plan.alive, plan.halving_cost) == (8, [200, 400, 800], [8, 4, 2], 3200)
    assert plan.finalist_share == (8000 - 3200) // 2 == 2400 and plan.finalists == 2


def test_a_given_cohort_and_shares_rounded_to_whole_evaluations():
    # 5 x 100, then ceil(5 / 3) = 2 x (300 - 100), then 1 at 900 = 1 x 600: 500 + 400 + 600 = 1500 > 1000
    with pytest.raises(HalvingError, match=r"5 trials need 1500 steps.*at most 3 trial"):
        halving_plan(1000, grace=100, eta=3, finalists=1, eval_every=100, cohort=5)
    plan = halving_plan(1050, grace=100, eta=3, finalists=1, eval_every=100, cohort=3)
    # 3 x 100, then ceil(3 / 3) = 1 trial x (300 - 100): 500 spent; 1050 - 500 = 550 -> 500 in whole evaluations
    assert (plan.milestones, plan.alive, plan.halving_cost, plan.finalist_share) == ([100, 300], [3, 1], 500, 500)


def test_a_budget_below_the_first_rung_is_refused():
    with pytest.raises(HalvingError, match="smaller than one rung"):
        halving_plan(150, grace=200, eta=2, finalists=2, eval_every=200)
