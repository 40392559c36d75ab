"""Parameter importances from the search's Optuna study (``optuna.db``), opened read-only.

PED-ANOVA (Optuna's ``PedAnovaImportanceEvaluator``): which hyperparameters matter for reaching
the best new-domain WERs. Chosen over the default fANOVA because fANOVA needs scikit-learn;
PED-ANOVA needs only NumPy. Optuna counts COMPLETE trials only (not those ASHA pruned).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

# Below this many COMPLETE trials the ranking is mostly noise (Optuna's docs suggest at least 5
# trials in the top quantile); it is still shown, with this said.
INDICATIVE_BELOW = 20


@dataclass
class Importances:
    """Importance per parameter (summing to 1), the trials they rest on, or why there are none."""

    values: Dict[str, float] = field(default_factory=dict)
    complete_trials: int = 0
    message: Optional[str] = None


def _read_only_url(db: Path) -> str:
    # SQLite URI mode=ro: the dashboard can never write to (or create) the study a search is writing.
    return f"sqlite:///{db.resolve().as_uri()}?mode=ro&uri=true"


def param_importances(db: Path, study_name: Optional[str]) -> Importances:
    """Importances of the study ``study_name`` (or the only study) in the SQLite file ``db``."""
    if not db.is_file():
        return Importances(message=f"no {db.name} in the results folder (the study may live in another "
                                   "storage: results.study_storage; open it with optuna-dashboard)")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = None
    try:
        storage = optuna.storages.RDBStorage(_read_only_url(db), skip_table_creation=True)
        names = optuna.get_all_study_names(storage)
        if study_name not in names:
            if len(names) != 1:
                return Importances(message=f"{db}: no study named {study_name!r}; found {names}")
            study_name = names[0]
        # The importances rest on the COMPLETE trials only: read those once into a study in memory (Optuna's
        # evaluator reads the whole study several times, seconds each for a search of many thousands of trials).
        study_id = storage.get_study_id_from_name(study_name)
        trials = storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        study = optuna.create_study(directions=storage.get_study_directions(study_id))
        study.add_trials(trials)
        complete = len(trials)
        if complete < 2:
            return Importances(complete_trials=complete,
                               message=f"{complete} complete trial(s) in the study: importances need at least 2 "
                                       "(trials pruned by ASHA do not count)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except Exception as e:  # SQLAlchemy/SQLite/Optuna errors on a corrupt or foreign file: shown, never fatal
        return Importances(message=f"{db}: cannot compute importances: {type(e).__name__}: {e}")
    finally:
        if storage is not None:  # the view is rebuilt on every change: close the file each time
            storage.engine.dispose()
    # Optuna warns (and returns equal or zero values) when the trials cannot separate parameters.
    equal = [str(w.message) for w in caught if "importances will be equal" in str(w.message).lower()]
    if equal or not values:
        return Importances(complete_trials=complete,
                           message=f"too few distinct complete trials ({complete}) to rank parameters"
                                   + (f": {equal[0]}" if equal else ""))
    note = (f"indicative only: {complete} complete trials (fewer than {INDICATIVE_BELOW})"
            if complete < INDICATIVE_BELOW else None)
    return Importances(values={k: float(v) for k, v in values.items()}, complete_trials=complete, message=note)
