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


def _setup(budget=40, cohort=None):
    plan = halving_plan(budget, grace=2, eta=2, finalists=2, eval_every=2, cohort=cohort)
    scheduler = BudgetScheduler(plan, eta=2, eval_every=2, metric="score")
    trials = [_Trial(t) for t in "abcd"[:plan.cohort]]
    controller = _Controller(trials)
    for t in trials:
        scheduler.on_trial_add(controller, t)
    return scheduler, controller, trials


def _report(scheduler, controller, trial, step, score, final=False):
    decision = scheduler.on_trial_result(controller, trial, {"step": step, "score": score, "final": final})
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
