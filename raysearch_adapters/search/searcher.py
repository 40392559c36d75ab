"""Ray Tune's OptunaSearch with the constraint, ASHA's stops told as PRUNED, and the trial's metrics as user attrs.

Stock OptunaSearch tells a trial that ASHA stopped as COMPLETE with its early value and
knows nothing of constraints. Here each finished trial gets, before ``study.tell`` (the
sampler reads the trial at tell time), the constraint ``degradation - kappa`` (feasible
when <= 0; Optuna 5's ``Trial.set_constraint``) and its dev metrics as user attributes, so
``study.best_trial(s)`` and optuna-dashboard show feasible trials only as best.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import optuna
from ray.tune.search.optuna import OptunaSearch

# The last result's values kept on the Optuna trial (optuna-dashboard shows them).
USER_ATTRS = ("dev_wer_new", "dev_wer_original", "degradation", "feasible", "eval_index", "step",
              "adapter_params", "adapter_percent", "checkpoint_path")
TUNE_TRIAL_ID = "tune_trial_id"  # user attr linking an Optuna trial to its Ray Tune trial

log = logging.getLogger(__name__)


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that sets ``degradation - limit`` as the constraint and tells ASHA-stopped trials PRUNED."""

    def __init__(self, *args, limit: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._limit = limit

    def suggest(self, trial_id: str) -> Optional[Dict]:
        """The next config; the Optuna trial records the Tune trial id."""
        config = super().suggest(trial_id)
        if config is not None:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config

    def _already_told(self, trial_id: str) -> None:
        # A driver killed after telling Optuna a trial's outcome but before Tune saved its own
        # state: the resumed Tune run trains that trial again. The study keeps what it was told.
        log.warning("trial %s: its Optuna trial had already finished (told before the driver stopped); "
                    "the study keeps that outcome", trial_id)
        self._completed_trials.add(trial_id)

    def on_trial_result(self, trial_id: str, result: Dict) -> None:
        """An intermediate value for Optuna (pruned trials are ranked by their last one)."""
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._already_told(trial_id)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        """Tell Optuna: constraint and user attrs first, then COMPLETE, PRUNED (not ``final``) or FAIL."""
        try:
            self._tell(trial_id, result, error)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._already_told(trial_id)

    def _tell(self, trial_id: str, result: Optional[Dict], error: bool) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        measured = bool(result) and result.get("degradation") is not None
        ot_trial = self._ot_trials[trial_id]
        if measured:
            ot_trial.set_constraint("degradation", float(result["degradation"]) - self._limit)
            for key in USER_ATTRS:
                if result.get(key) is not None:
                    ot_trial.set_user_attr(key, result[key])
        if measured and not error and not result.get("final"):
            # Stopped by the scheduler before its last evaluation. Tune withholds that result from
            # on_trial_result, so report it here: TPE ranks pruned trials by their last value.
            if not isinstance(self.metric, list) and result.get(self.metric) is not None:
                ot_trial.report(float(result[self.metric]), int(result.get("training_iteration", 0)))
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error or not measured)


def fail_abandoned_trials(study: optuna.Study) -> int:
    """Tell FAIL to trials still RUNNING after a search ends (asked by a killed driver, never run); their number."""
    abandoned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in abandoned:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(abandoned)
