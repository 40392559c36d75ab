"""The Ray Tune scheduler that spends ``search.budget_steps``: synchronous successive halving, then finalists.

The plan (:mod:`raysearch_adapters.halving`) fixes the cohort and the rungs. A trial that
reaches its rung is PAUSED (Tune keeps the checkpoint it reported there) until every trial of
the cohort still in the race has reached the rung; then the best go on (resumed from that
checkpoint: their step counter, optimizer state and learning rate carry on) and the rest stop.
The trials left at the end are the finalists: each trains on for its share of what the halving
left of the budget, unless it stops improving first (``search.patience``, in the trial itself).

Waiting for the whole rung makes every decision a function of the trials' own evaluations,
never of which trial happened to report first; and the cohort is suggested before any trial
finishes, so the sampler sees the same study whatever the timing. Trials are ranked by their
best evaluation so far (``asha_score``: dev new-domain WER, infeasible ones last); ties go to
the earlier trial.

A finalist stopped because its share is spent trained for as long as the budget allows: it is
marked ``final`` (``FinalMarker``), so the tables and Optuna count it COMPLETE like a trial that
ended on its own; a trial stopped at a rung is PRUNED.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set

from ray.tune.callback import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from raysearch_adapters.config import Config
from raysearch_adapters.halving import HalvingPlan, halving_plan, next_alive


def budget_plan(cfg: Config) -> HalvingPlan:
    """The halving plan of a search with ``search.budget_steps`` (validated at config load)."""
    s, t = cfg.search, cfg.train
    return halving_plan(s.budget_steps, s.asha.grace_period * t.eval_every, s.asha.reduction_factor, s.finalists,
                        t.eval_every, cfg.cohort_size_asked())


class BudgetScheduler(TrialScheduler):
    """Synchronous successive halving over a cohort of trials, then the finalists' shares (module docstring)."""

    def __init__(self, plan: HalvingPlan, eta: int, eval_every: int, metric: str):
        super().__init__()
        self._metric, self._mode = metric, "min"
        self.plan, self._eta, self._eval_every = plan, eta, eval_every
        self._trials: Dict[str, Trial] = {}  # in the order Tune added them: the cohort
        self._milestone: Dict[str, int] = {}  # the step a trial in the halving trains to
        self._score: Dict[str, float] = {}  # its score there, once it has reached it
        self._steps: Dict[str, int] = {}  # steps each trial has trained
        self._allowance: Dict[str, int] = {}  # finalists: the step each may train to
        self._out: Set[str] = set()  # trials no longer in the race (stopped, ended, failed)
        self._to_unpause: Set[str] = set()
        self.finished: Set[str] = set()  # finalists stopped because their share was spent

    # ---------------------------------------------------------------- bookkeeping

    @property
    def steps_spent(self) -> int:
        """Optimiser steps trained by every trial so far (a resumed trial's steps count once)."""
        return sum(self._steps.values())

    def _live(self) -> List[str]:
        return [t for t in self._trials if t not in self._out]

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        if trial.trial_id in self._trials:
            return
        self._trials[trial.trial_id] = trial
        self._milestone[trial.trial_id] = self.plan.milestones[0]
        self._steps[trial.trial_id] = 0

    def _leave(self, tune_controller, trial: Trial, result: Optional[dict]) -> None:
        """A trial ended by itself (patience, its last step), failed, or was stopped: the others may go on."""
        tid = trial.trial_id
        if tid in self._out or tid not in self._trials:
            return
        self._note_steps(tid, result or trial.last_result)
        self._out.add(tid)
        self._score.pop(tid, None)
        self._to_unpause.discard(tid)
        if tid not in self._allowance:
            self._decide(tune_controller, current=None)

    def on_trial_complete(self, tune_controller, trial: Trial, result: Optional[dict]) -> None:
        self._leave(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._leave(tune_controller, trial, None)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._leave(tune_controller, trial, None)

    def _note_steps(self, tid: str, result: Optional[dict]) -> None:
        if result and result.get("step") is not None:
            self._steps[tid] = max(self._steps.get(tid, 0), int(result["step"]))

    # ---------------------------------------------------------------- decisions

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        tid = trial.trial_id
        self._note_steps(tid, result)
        self._to_unpause.discard(tid)
        step = int(result["step"])
        if result.get("final"):  # it ends by itself (patience, or its last step): on_trial_complete follows
            return TrialScheduler.CONTINUE
        if tid in self._allowance:
            if step >= self._allowance[tid]:
                self.finished.add(tid)
                self._out.add(tid)
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE
        if step < self._milestone[tid]:
            return TrialScheduler.CONTINUE
        self._score[tid] = float(result[self._metric])
        return self._decide(tune_controller, current=tid)

    def _decide(self, tune_controller, current: Optional[str]) -> str:
        """Halve (or start the finalists) once every trial in the race has reached its rung; the decision
        for ``current`` (the trial whose result is being processed; PAUSE while others have not)."""
        live = self._live()
        waiting = len(self._trials) < self.plan.cohort or any(t not in self._score for t in live)
        if not live or waiting:
            return TrialScheduler.PAUSE
        order = list(self._trials)
        ranked = sorted(live, key=lambda t: (self._score[t], order.index(t)))
        if len(live) > self.plan.finalists:
            keep = next_alive(len(live), self._eta, self.plan.finalists)
            for t in ranked[:keep]:
                self._milestone[t] *= self._eta
                del self._score[t]
            return self._act(tune_controller, current, go=ranked[:keep], stop=ranked[keep:])
        # The finalists: an equal share each of what is left of the budget, in whole evaluation intervals.
        share = (self.plan.budget - self.steps_spent) // len(live) // self._eval_every * self._eval_every
        for t in live:
            self._score.pop(t)
            self._allowance[t] = self._steps[t] + share
        if share > 0:
            return self._act(tune_controller, current, go=live, stop=[])
        self.finished.update(live)
        return self._act(tune_controller, current, go=[], stop=live)

    def _act(self, tune_controller, current: Optional[str], go: List[str], stop: List[str]) -> str:
        decision = TrialScheduler.PAUSE
        for t in stop:
            self._out.add(t)
            if t == current:
                decision = TrialScheduler.STOP
                continue
            trial = self._trials[t]
            if t in self.finished:  # a paused finalist whose share is nothing: it trained all it could
                trial.last_result["final"] = True
            tune_controller.stop_trial(trial)
        for t in go:
            if t == current:
                decision = TrialScheduler.CONTINUE
            else:
                self._to_unpause.add(t)
        return decision

    def choose_trial_to_run(self, tune_controller) -> Optional[Trial]:
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PAUSED and trial.trial_id in self._to_unpause:
                return trial
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        return None

    def debug_string(self) -> str:
        return (f"Budget: {self.steps_spent} of {self.plan.budget} steps spent; "
                f"{len(self._live())} of {len(self._trials)} trials in the race")


class FinalMarker(Callback):
    """Marks the result on which ``BudgetScheduler`` stopped a finalist whose share was spent as ``final``
    (Tune lets callbacks amend a result before it becomes the trial's last one)."""

    def __init__(self, scheduler: BudgetScheduler):
        self._scheduler = scheduler

    def on_trial_result(self, iteration: int, trials: List[Trial], trial: Trial, result: dict, **info) -> None:
        if trial.trial_id in self._scheduler.finished:
            result["final"] = True
