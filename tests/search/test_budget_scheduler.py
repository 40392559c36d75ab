"""The budget scheduler's decisions, fed results directly (the end-to-end runs are in test_budget_search.py)."""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from raysearch_adapters.halving import halving_plan
from raysearch_adapters.search.budget import BudgetScheduler

PAUSE, CONTINUE, STOP = TrialScheduler.PAUSE, TrialScheduler.CONTINUE, TrialScheduler.STOP


class _Trial:  # what the scheduler reads of a Tune trial
    def __init__(self, trial_id):
        self.trial_id, self.status, self.last_result = trial_id, Trial.RUNNING, {}


class _Controller:  # the calls the scheduler makes on Tune's controller
    def __init__(self, trials):
        self.trials, self.stopped, self.marked = trials, [], []

    def stop_trial(self, trial):
        trial.status = Trial.TERMINATED
        self.stopped.append(trial.trial_id)

    def get_trials(self):
        return self.trials

    def _mark_trial_to_checkpoint(self, trial):  # Tune's own writes no status for a trial without an actor
        self.marked.append(trial.trial_id)


def _ev(wer: float, degradation: float, loops: int = 0) -> dict:
    """One evaluation as the scheduler keeps it (one protected set, held to the scheduler's limit)."""
    return {"dev_wer_new": wer, "degradation": degradation, "new_loops": loops, "sets": []}


def _setup(budget=40, cohort=None):
    plan = halving_plan(budget, grace=2, eta=2, finalists=2, eval_every=2, cohort=cohort)
    scheduler = BudgetScheduler(plan, eta=2, eval_every=2, metric="asha_score", limit=1.0)
    trials = [_Trial(t) for t in "abcd"[:plan.cohort]]
    controller = _Controller(trials)
    for t in trials:
        scheduler.on_trial_add(controller, t)
    return scheduler, controller, trials


def _report(scheduler, controller, trial, step, score, final=False):
    """An evaluation within kappa: its rung score is its dev new-domain WER ``score``."""
    decision = scheduler.on_trial_result(controller, trial, {"step": step, "eval_dev_wer_new": score,
                                                             "eval_degradation": 0.0, "final": final})
    if decision == PAUSE:
        trial.status = Trial.PAUSED
    return decision


def test_a_rung_waits_for_every_trial_then_keeps_the_best_half_and_ties_go_to_the_earlier_trial():
    scheduler, controller, (a, b, c, d) = _setup()
    assert scheduler.plan.milestones == [2, 4] and scheduler.plan.cohort == 4
    assert _report(scheduler, controller, a, 2, 50.0) == PAUSE
    assert _report(scheduler, controller, b, 2, 40.0) == PAUSE
    assert _report(scheduler, controller, c, 2, 90.0) == PAUSE
    # d completes the rung: b (40) and then a and d (50, a tie: a started first) ... a goes on, d stops
    assert _report(scheduler, controller, d, 2, 50.0) == STOP
    assert controller.stopped == controller.marked == ["c"] and scheduler.choose_trial_to_run(controller) is a
    assert scheduler.steps_spent == 8


def test_finalists_train_to_the_plans_end_and_are_marked_finished_there():
    scheduler, controller, (a, b, c, d) = _setup()
    for t, score in ((a, 1.0), (b, 2.0), (c, 3.0), (d, 4.0)):
        _report(scheduler, controller, t, 2, score)
    assert _report(scheduler, controller, a, 4, 1.0) == PAUSE
    assert _report(scheduler, controller, b, 4, 2.0) == CONTINUE  # the two left are the finalists
    end = scheduler.plan.milestones[-1] + scheduler.plan.finalist_share  # 4 + (40 - 12) // 2 = 18
    assert end == 18
    assert _report(scheduler, controller, b, 16, 2.0) == CONTINUE
    assert _report(scheduler, controller, b, 18, 2.0) == STOP and "b" in scheduler.finished
    assert scheduler.steps_spent == 2 + 2 + 4 + 18


def test_a_trial_that_ends_early_does_not_take_the_finalists_cool_down_away():
    """c ends by itself at step 2 (patience): the three left halve to two at step 4, who still train to the
    plan's end (18), because the budget holds it for both."""
    scheduler, controller, (a, b, c, d) = _setup()
    _report(scheduler, controller, c, 2, 3.0, final=True)
    scheduler.on_trial_complete(controller, c, {"step": 2})
    for t, score in ((a, 1.0), (b, 2.0)):
        assert _report(scheduler, controller, t, 2, score) == PAUSE
    assert _report(scheduler, controller, d, 2, 4.0) == STOP  # 3 left: the best max(2, ceil(3 / 2)) = 2 go on
    assert _report(scheduler, controller, a, 4, 1.0) == PAUSE
    assert _report(scheduler, controller, b, 4, 2.0) == CONTINUE
    assert _report(scheduler, controller, b, 16, 2.0) == CONTINUE
    assert _report(scheduler, controller, b, 18, 2.0) == STOP and scheduler.finished == {"b"}


def test_the_limit_widens_at_early_rungs_and_is_kappa_where_the_finalists_are_picked():
    """kappa 1, rungs at steps 2 and 4 (the finalists' start): at step 2 degradation up to 2 costs nothing, so a
    trial over kappa that learned most goes on; past the widened limit each point costs INFEASIBLE_PENALTY."""
    plan = halving_plan(40, grace=2, eta=2, finalists=1, eval_every=2, cohort=4)
    assert plan.milestones == [2, 4, 8]
    scheduler = BudgetScheduler(plan, eta=2, eval_every=2, metric="asha_score", limit=1.0)
    assert [scheduler.rung_limit(m) for m in plan.milestones] == [4.0, 2.0, 1.0]
    # 60 + 10 x (4.5 - 4): the same trial's price at step 2 is 5 points; at step 8 it is 10 x 3.5
    assert scheduler.rung_score([_ev(60.0, 4.5)], 2) == 65.0
    assert scheduler.rung_score([_ev(60.0, 4.5)], 8) == 95.0
    assert scheduler.rung_score([_ev(60.0, 1.0)], 8) == 60.0
    trials = [_Trial(t) for t in "abcd"]
    controller = _Controller(trials)
    for t in trials:
        scheduler.on_trial_add(controller, t)
    a, b, c, d = trials
    rows = {a: (85.5, 1.95), b: (88.0, 0.5), c: (90.0, 0.2), d: (70.0, 30.0)}  # d wrecks the original domain
    for t, (wer, deg) in rows.items():
        decision = scheduler.on_trial_result(controller, t, {"step": 2, "eval_dev_wer_new": wer,
                                                             "eval_degradation": deg})
        t.status = Trial.PAUSED if decision == PAUSE else t.status
    assert decision == STOP and controller.stopped == ["c"]  # d (the current one) and c stop; a and b go on
    assert scheduler.choose_trial_to_run(controller) in (a, b) and scheduler._milestone["a"] == 4


def test_a_rung_scores_every_evaluation_against_its_own_limit_not_only_the_reported_best():
    """Every evaluation of a is over kappa, so a reports its least degraded one (step 2: 85.5 / +1.95); at the
    step-4 rung (limit 2 x kappa) its step-4 evaluation (75 / +2.2: 75 + 10 x 0.2 = 77) is what ranks it, ahead
    of b (79.3 / +0.9). Scored on the reported best (85.5), a would stop there."""
    plan = halving_plan(60, grace=2, eta=2, finalists=1, eval_every=2, cohort=3)
    assert plan.milestones == [2, 4, 8] and plan.alive == [3, 2, 1]
    scheduler = BudgetScheduler(plan, eta=2, eval_every=2, metric="asha_score", limit=1.0)
    trials = [_Trial(t) for t in "abc"]
    controller = _Controller(trials)
    for t in trials:
        scheduler.on_trial_add(controller, t)
    a, b, c = trials

    def report(trial, step, wer, deg, best=None):
        best = best or (wer, deg)
        decision = scheduler.on_trial_result(controller, trial, {
            "step": step, "eval_dev_wer_new": wer, "eval_degradation": deg,
            "dev_wer_new": best[0], "degradation": best[1]})
        trial.status = Trial.PAUSED if decision == PAUSE else trial.status
        return decision

    assert report(a, 2, 85.5, 1.95) == PAUSE
    assert report(b, 2, 92.1, 0.65) == PAUSE
    assert report(c, 2, 99.0, 0.0) == STOP  # the rung's limit at step 2 is 4: a and b go on
    assert scheduler.choose_trial_to_run(controller) in (a, b)
    assert report(b, 4, 79.3, 0.9) == PAUSE
    assert report(a, 4, 75.0, 2.2, best=(85.5, 1.95)) == CONTINUE
    assert controller.stopped == ["b"]


def test_a_rung_holds_the_degradation_feasibility_holds_to_the_limit():
    """With search.feasibility=upper each evaluation carries its upper bound as eval_held_degradation: a trial whose
    estimate is within the rung's limit but whose bound is far over it is priced by the bound, and stops."""
    plan = halving_plan(60, grace=2, eta=2, finalists=1, eval_every=2, cohort=2)
    scheduler = BudgetScheduler(plan, eta=2, eval_every=2, metric="asha_score", limit=1.0)
    trials = [_Trial(t) for t in "ab"]
    controller = _Controller(trials)
    for t in trials:
        scheduler.on_trial_add(controller, t)
    a, b = trials
    for trial, wer, deg, upper in ((a, 70.0, 0.5, 9.0), (b, 75.0, 0.5, 1.5)):
        decision = scheduler.on_trial_result(controller, trial, {
            "step": 2, "eval_dev_wer_new": wer, "eval_degradation": deg, "eval_held_degradation": upper,
            "dev_wer_new": wer, "degradation": deg, "held_degradation": upper})
        trial.status = Trial.PAUSED if decision == PAUSE else trial.status
    # the rung's limit at step 2 is 4 x kappa: a scores 70 + 10 x 5 = 120, b 75
    assert controller.stopped == ["a"]


def test_a_rung_prices_each_looping_utterance_over_max_new_loops_at_every_rung():
    """With search.max_new_loops=0 an evaluation that added a looping original-domain utterance is priced
    LOOP_PRICE points of degradation over the limit (10 x 1 = 10 on the score); the early rungs widen kappa, never
    the loops: a (70 %, one new loop: 80) stops before b (75 %)."""
    plan = halving_plan(60, grace=2, eta=2, finalists=1, eval_every=2, cohort=2)
    scheduler = BudgetScheduler(plan, eta=2, eval_every=2, metric="asha_score", limit=1.0, max_new_loops=0)
    trials = [_Trial(t) for t in "ab"]
    controller = _Controller(trials)
    for t in trials:
        scheduler.on_trial_add(controller, t)
    a, b = trials
    for trial, wer, loops in ((a, 70.0, 1), (b, 75.0, 0)):
        decision = scheduler.on_trial_result(controller, trial, {
            "step": 2, "eval_dev_wer_new": wer, "eval_degradation": 0.2, "eval_new_loops": loops,
            "dev_wer_new": wer, "degradation": 0.2, "new_loops": loops})
        trial.status = Trial.PAUSED if decision == PAUSE else trial.status
    assert controller.stopped == ["a"]
    assert scheduler.rung_score([_ev(70.0, 0.2, 1)], 2) == 80.0 and scheduler.rung_score([_ev(70.0, 0.2, 0)], 2) == 70.0
    unheld = BudgetScheduler(plan, eta=2, eval_every=2, metric="asha_score", limit=1.0, max_new_loops=None)
    assert unheld.rung_score([_ev(70.0, 0.2, 3)], 2) == 70.0  # loops counted, not held to a limit
