"""The Ray Tune scheduler that spends ``search.budget_steps``: synchronous successive halving, then finalists.

The plan (:mod:`raysearch_adapters.halving`) fixes the cohort and the rungs. A trial that
reaches its rung is PAUSED (Tune keeps the checkpoint it reported there) until every trial of
the cohort still in the race has reached the rung; then the best go on (resumed from that
checkpoint: their step counter, optimizer state and learning rate carry on) and the rest stop.
The trials left at the end are the finalists: each trains on for its share of what the halving
left of the budget, unless it stops improving first (``search.patience``, in the trial itself).

Waiting for the whole rung makes every decision a function of the trials' own evaluations,
never of which trial happened to report first; and the cohort is suggested before any trial
finishes, so the sampler sees the same study whatever the timing. A trial is ranked by its best
evaluation so far, each scored as dev new-domain WER plus a price per point of degradation over
the rung's limit (:func:`~raysearch_adapters.train.objective.asha_score`); ties go to the
earlier trial.

The limit widens at the early rungs: at a rung of ``m`` steps it is kappa x (last milestone / m),
so kappa itself at the rung that picks the finalists, twice kappa one rung before (eta 2), and
so on. A trial's degradation early on overstates where it ends when it distils to the base
model (the demo's start point: +1.77 points at step 200, +1.06 at 400, -0.06 at 1,200): held to
kappa at step 200, the config that went on to win on the other seeds was stopped there. A trial
that wrecks the original domain (+17 to +47 points seen) is still ranked last at any rung, and
the finalists, the winner and Optuna are held to kappa itself.

A finalist stopped because its share is spent trained for as long as the budget allows: it is
marked ``final`` (``FinalMarker``), so the tables and Optuna count it COMPLETE like a trial that
ended on its own; a trial stopped at a rung is PRUNED.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Set

from ray.tune.callback import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from raysearch_adapters.halving import HalvingPlan, next_alive
from raysearch_adapters.results.select import held_degradation, new_loops, protected_sets
from raysearch_adapters.train.objective import asha_score_of


class BudgetScheduler(TrialScheduler):
    """Synchronous successive halving over a cohort of trials, then the finalists' shares (module docstring)."""

    def __init__(self, plan: HalvingPlan, eta: int, eval_every: int, metric: str, limit: float, sink=None,
                 max_new_loops: Optional[int] = None):
        super().__init__()
        self._metric, self._mode = metric, "min"
        self._limit = limit  # kappa in degradation units; a rung widens it (rung_limit)
        self._max_new_loops = max_new_loops  # looping utterances an evaluation may add (None: not held); no rung widens it
        self.plan, self._eta, self._eval_every = plan, eta, eval_every
        # Where the state goes with each experiment snapshot: the searcher, which Tune saves with the trials'
        # states in one snapshot and restores on --resume (the scheduler itself is not saved).
        self._sink = sink
        self._restoring = False  # a resumed search's trials are being added again
        self._trials: Dict[str, Trial] = {}  # in the order the search created them: the cohort
        self._milestone: Dict[str, int] = {}  # the step a trial in the halving trains to
        self._score: Dict[str, float] = {}  # its score there, once it has reached it
        # every evaluation's dev new WER, held degradation (search.feasibility), looping utterances it added, and
        # its protected sets' held degradations and limits (scored by asha_score_of)
        self._evals: Dict[str, List[dict]] = {}
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

    _STATE = ("_milestone", "_score", "_evals", "_steps", "_allowance", "_out", "_to_unpause", "finished")

    def _publish(self) -> None:
        """Hand the state to the searcher, so that the next experiment snapshot holds it."""
        if self._sink is not None:
            self._sink.scheduler_state = {"order": list(self._trials),
                                          **{k: copy.deepcopy(getattr(self, k)) for k in self._STATE}}

    def _restore(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, copy.deepcopy(state[k]))
        self._trials = dict.fromkeys(state["order"])  # Trial objects come back as Tune adds them
        self._restoring = True

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        state = getattr(self._sink, "scheduler_state", None)
        if not self._trials and state:  # a resumed search: Tune adds its trials again
            self._restore(state)
        tid = trial.trial_id
        if self._trials.get(tid) is None and tid in self._trials:  # a restored trial
            self._trials[tid] = trial
            if tid in self._score and trial.status == Trial.PENDING:
                trial.set_status(Trial.PAUSED)  # it waits at its rung, as when the search stopped
            return
        if tid in self._trials:
            return
        self._trials[tid] = trial
        self._milestone[tid] = self.plan.milestones[0]
        self._steps[tid] = 0
        self._publish()

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
        self._publish()

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
        decision = self._on_result(tune_controller, trial, result)
        self._publish()
        return decision

    def _on_result(self, tune_controller, trial: Trial, result: dict) -> str:
        tid = trial.trial_id
        self._note_steps(tid, result)
        self._to_unpause.discard(tid)
        step = int(result["step"])
        if result.get("final"):  # it ends by itself (patience, or its last step): on_trial_complete follows
            return TrialScheduler.CONTINUE
        self._evals.setdefault(tid, []).append({
            "dev_wer_new": float(result["eval_dev_wer_new"]), "degradation": held_degradation(result, prefix="eval_"),
            "new_loops": new_loops(result, prefix="eval_"),
            "sets": [{"role": "protected", "held_degradation": s["held_degradation"], "limit": s["limit"]}
                     for s in protected_sets(result, prefix="eval_")]})
        if tid in self._allowance:
            if step >= self._allowance[tid]:
                self.finished.add(tid)
                self._out.add(tid)
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE
        if step < self._milestone[tid]:
            return TrialScheduler.CONTINUE
        self._score[tid] = self.rung_score(self._evals[tid], self._milestone[tid])
        return self._decide(tune_controller, current=tid)

    def rung_limit(self, milestone: int) -> float:
        """The degradation a trial may show at the rung of ``milestone`` steps without a penalty (module
        docstring): the limit times how many times further the finalists' start is."""
        return self._limit * self.plan.milestones[-1] / milestone

    def rung_score(self, evaluations: List[dict], milestone: int) -> float:
        """What ranks a trial at a rung (lower is better): the best score of its evaluations (dicts of dev new WER,
        held degradation, looping utterances added and protected sets, as :meth:`on_trial_result` keeps them)
        against the rung's limits: each protected set's limit times the rung's widening (:meth:`rung_limit`), the
        loops against ``max_new_loops``, the same at every rung.

        Scored against the rung's limit, not the one the trial's reported best was chosen by: with kappa, a
        trial whose every evaluation is over kappa reports its least degraded one, often its first, while a
        later one that learned far more and sits within the rung's limit is what it will build on."""
        widen = self.plan.milestones[-1] / milestone
        return min(asha_score_of(e, self._limit, self._max_new_loops, widen=widen) for e in evaluations)

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
        # The finalists: each trains to the plan's end (the length every trial was given, so that its cool-down
        # lands there) when what is left of the budget holds that for all of them, as it does when no trial
        # dropped out early; else each gets an equal share of what is left.
        end = self.plan.milestones[-1] + self.plan.finalist_share
        left = self.plan.budget - self.steps_spent
        if sum(end - self._steps[t] for t in live) <= left:
            allowance = {t: end for t in live}
        else:
            share = left // len(live) // self._eval_every * self._eval_every
            allowance = {t: self._steps[t] + share for t in live}
        for t in live:
            self._score.pop(t)
            self._allowance[t] = allowance[t]
        if any(allowance[t] > self._steps[t] for t in live):
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
            _save_with_next_state(tune_controller, trial)
        for t in go:
            if t == current:
                decision = TrialScheduler.CONTINUE
            else:
                self._to_unpause.add(t)
        return decision

    def choose_trial_to_run(self, tune_controller) -> Optional[Trial]:
        if self._restoring and all(t is not None for t in self._trials.values()):
            # Every trial of the resumed search is back: a rung that was complete when it stopped is decided now.
            self._restoring = False
            self._decide(tune_controller, current=None)
            self._publish()
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


def _save_with_next_state(tune_controller, trial: Trial) -> None:
    """Have the next experiment state record the trial as stopped. Tune writes a stopped trial's new status
    only when it had an actor; a trial paused at a rung has none, and its stored status would stay PAUSED:
    a run that looks interrupted. The scheduler's handle on the controller does not expose this (ray 2.60)."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    mark = getattr(controller, "_mark_trial_to_checkpoint", None)
    if mark is None:
        raise RuntimeError("this Ray Tune version cannot record a paused trial as stopped (no "
                           "TuneController._mark_trial_to_checkpoint); run with search.budget_steps=0")
    mark(trial)


class FinalMarker(Callback):
    """Marks the result on which ``BudgetScheduler`` stopped a finalist whose share was spent as ``final``
    (Tune lets callbacks amend a result before it becomes the trial's last one)."""

    def __init__(self, scheduler: BudgetScheduler):
        self._scheduler = scheduler

    def on_trial_result(self, iteration: int, trials: List[Trial], trial: Trial, result: dict, **info) -> None:
        if trial.trial_id in self._scheduler.finished:
            result["final"] = True
