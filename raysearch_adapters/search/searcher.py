"""Ray Tune's OptunaSearch with the constraint, ASHA's stops told as PRUNED, and the trial's metrics as user attrs.

Stock OptunaSearch tells a trial that ASHA stopped as COMPLETE with its early value and
knows nothing of constraints. Here each finished trial gets, before ``study.tell`` (the
sampler reads the trial at tell time), the constraint ``degradation - kappa`` (feasible
when <= 0; Optuna 5's ``Trial.set_constraint``) and its dev metrics as user attributes, so
``study.best_trial(s)`` and optuna-dashboard show feasible trials only as best.

An outcome is told once the experiment state on storage records the trial finished
(``StoredStateWatcher`` calls ``tell_recorded``), never before: a driver killed in between
would resume the trial and run it again, and the study, which cannot be told twice, would
keep the first run's outcome while the tables get the rerun's. The sampler learns of a
trial a few seconds later than Tune does.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Dict, Iterable, List, Optional, Tuple, Union

import optuna
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from raysearch_adapters.results.select import held_limits, new_loops

# The trial's result (its best evaluation) kept on the Optuna trial (optuna-dashboard shows them).
USER_ATTRS = ("dev_wer_new", "dev_wer_original", "degradation", "degradation_lower", "degradation_upper",
              "held_degradation", "feasible", "best_step", "eval_index", "step",
              "base_dev_wer_original", "adapter_params", "adapter_percent", "checkpoint_path")
TUNE_TRIAL_ID = "tune_trial_id"  # user attr linking an Optuna trial to its Ray Tune trial

log = logging.getLogger(__name__)


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that sets ``degradation - limit`` (and ``new_loops - max_new_loops``) as the constraints and
    tells ASHA-stopped trials PRUNED."""

    def __init__(self, *args, limit: float, max_new_loops: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._limit = limit
        self._max_new_loops = max_new_loops
        self._orphans: Optional[List[int]] = None
        # trial id -> (result, error, when noted): outcomes Tune has, not yet on storage, so not told
        self._untold: Dict[str, Tuple[Optional[Dict], bool, float]] = {}
        # each running trial's latest result: Tune stops a trial paused at a rung without passing its result
        self._latest: Dict[str, Dict] = {}
        # the budget scheduler's state, kept here because Tune saves (and restores) the searcher with each
        # experiment snapshot and not the scheduler (search.budget.BudgetScheduler)
        self.scheduler_state: Optional[Dict] = None

    def _setup_study(self, mode) -> None:
        """Ray's study, with its objectives named (optuna-dashboard shows "Objective 0" otherwise)."""
        super()._setup_study(mode)
        with warnings.catch_warnings():  # experimental since Optuna 3.2 and unchanged since: not news to a user
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(list(self._metric) if isinstance(self._metric, list) else [self._metric])

    def _take_orphan(self) -> Optional[optuna.trial.Trial]:
        """A RUNNING Optuna trial that no Tune trial owns: asked by a driver killed before Tune saved the
        trial. The resumed search's next trial takes it over (same parameters), so the study and the
        tables count every trial once."""
        if self._orphans is None:
            owned = {t.number for t in self._ot_trials.values()}
            self._orphans = [t.number for t in self._ot_study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) if t.number not in owned]
        while self._orphans:
            number = self._orphans.pop(0)
            frozen = self._ot_study.get_trials(deepcopy=False)[number]
            if frozen.state == optuna.trial.TrialState.RUNNING:
                return optuna.trial.Trial(self._ot_study, frozen._trial_id)
        return None

    def suggest(self, trial_id: str) -> Optional[Dict]:
        """The next config; the Optuna trial records the Tune trial id."""
        if trial_id not in self._ot_trials and self._ot_study is not None:
            orphan = self._take_orphan()
            if orphan is not None:
                self._ot_trials[trial_id] = orphan
        config = super().suggest(trial_id)
        if config is not None:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        """The searcher as Tune saved it; orphaned Optuna trials are looked for anew. The outcomes it had noted
        are told now: the stored state it was saved with records those trials finished, so none runs again."""
        super().restore(checkpoint_path)
        self._orphans = None
        # The restored random state may be older than the trials a killed driver asked: it would draw them again.
        self._ot_study.sampler.reseed_rng()
        self.tell_recorded(math.inf)

    def _already_told(self, trial_id: str) -> None:
        # Optuna was told, yet Tune runs the trial again: only if a copy of the state to storage was cut off
        # between the state file and the searcher's file. The study keeps what it was told.
        log.warning("trial %s: its Optuna trial had already finished (told before the driver stopped); "
                    "the study keeps that outcome", trial_id)
        self._completed_trials.add(trial_id)

    def on_trial_result(self, trial_id: str, result: Dict) -> None:
        """An intermediate value for Optuna (pruned trials are ranked by their last one), at the trial's
        evaluation index: Tune's iteration count starts again when a paused trial resumes."""
        self._latest[trial_id] = result
        try:
            with warnings.catch_warnings():  # a resumed trial repeats the evaluations after its checkpoint
                warnings.filterwarnings("ignore", message="The reported value is ignored because this `step")
                super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: _optuna_step(result)})
        except optuna.exceptions.UpdateFinishedTrialError:
            self._already_told(trial_id)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        """Note the outcome; ``tell_recorded`` tells it once the stored experiment state has the trial finished.
        A trial stopped while paused at a rung comes without its result: its latest one is it."""
        latest = self._latest.pop(trial_id, None)
        if trial_id not in self._completed_trials and trial_id not in self._untold:
            self._untold[trial_id] = (result if result or error else latest, error, time.time())

    def has_untold(self) -> bool:
        return bool(self._untold)

    def tell_recorded(self, saved_at: float) -> List[str]:
        """Tell Optuna the outcomes noted before the stored state's snapshot was written (at ``saved_at``);
        the trials told."""
        told = [trial_id for trial_id, (_, _, noted) in self._untold.items() if noted < saved_at]
        for trial_id in told:
            result, error, _ = self._untold.pop(trial_id)
            self._tell(trial_id, result, error)
        return told

    def _tell(self, trial_id: str, result: Optional[Dict], error: bool) -> None:
        if trial_id in self._completed_trials:
            return
        if trial_id not in self._ot_trials:
            log.warning("trial %s: no Optuna trial of this search belongs to it; its result is not told", trial_id)
            return
        ot_trial = self._ot_trials[trial_id]
        if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            # Told from the stored Tune state after the run that noted it (tell_finished_trials).
            self._completed_trials.add(trial_id)
            return
        tell_outcome(self._ot_study, ot_trial, result, error, self.metric, self._limit, self._max_new_loops)
        self._completed_trials.add(trial_id)


def _optuna_step(result: Dict) -> int:
    """The step of an intermediate value: the evaluation's index (Tune's iteration for a result without one)."""
    return int(result.get("eval_index") or result.get(TRAINING_ITERATION, 0))


def tell_outcome(study: optuna.Study, ot_trial: optuna.trial.Trial, result: Optional[Dict], error: bool,
                 metric: Union[str, List[str]], limit: float, max_new_loops: Optional[int] = None) -> None:
    """Constraints and user attrs first, then COMPLETE (the final evaluation), PRUNED (stopped by the scheduler
    before it) or FAIL (an error, or no evaluation). The constraints (feasible when each is <= 0): the held
    degradation over ``limit`` (``degradation``; with several protected sets, ``degradation:NAME`` for each, over its
    own limit); with ``max_new_loops`` an int, the looping utterances added over it (``new_loops``)."""
    measured = bool(result) and result.get("degradation") is not None
    if measured:
        # the degradation feasibility holds to the limit: the estimate, or its upper bound (search.feasibility)
        sets = held_limits(result, limit)
        for name, held, set_limit in sets:  # one constraint per protected set, each against its own limit
            ot_trial.set_constraint("degradation" if len(sets) == 1 else f"degradation:{name}", held - set_limit)
        if max_new_loops is not None:
            ot_trial.set_constraint("new_loops", float(new_loops(result) - max_new_loops))
        for key in USER_ATTRS:
            if result.get(key) is not None:
                ot_trial.set_user_attr(key, result[key])
    if not measured or error:
        study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
    elif not result.get("final"):
        # Tune withholds the stopping result from on_trial_result, so report it here: TPE ranks pruned
        # trials by their last value.
        if not isinstance(metric, list) and result.get(metric) is not None:
            with warnings.catch_warnings():  # a trial paused at its rung reported this evaluation already
                warnings.filterwarnings("ignore", message="The reported value is ignored because this `step")
                ot_trial.report(float(result[metric]), _optuna_step(result))
        study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(ot_trial, [float(result[m]) for m in metric] if isinstance(metric, list) else float(result[metric]))


def tell_finished_trials(study: optuna.Study, trials: Iterable, metric: Union[str, List[str]],
                         limit: float, max_new_loops: Optional[int] = None) -> List[str]:
    """Tell the outcome of each trial the stored Tune state has finished (TERMINATED or ERROR) whose Optuna
    trial is still RUNNING: noted by a driver that ended (or was killed) before the stored state caught up.
    The trial ids told."""
    running = {t.user_attrs.get(TUNE_TRIAL_ID): t for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    told = []
    for trial in trials:
        frozen = running.get(trial.trial_id)
        if frozen is None or trial.status not in ("TERMINATED", "ERROR"):
            continue
        error = trial.status == "ERROR"
        tell_outcome(study, optuna.trial.Trial(study, frozen._trial_id), None if error else trial.last_result,
                     error, metric, limit, max_new_loops)
        told.append(trial.trial_id)
    return told


def fail_abandoned_trials(study: optuna.Study) -> int:
    """Tell FAIL to trials still RUNNING after a search ends (asked by a killed driver, never run); their number."""
    abandoned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in abandoned:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(abandoned)
