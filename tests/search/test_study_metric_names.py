"""The Optuna study names its objectives (optuna-dashboard shows them instead of "Objective 0")."""

from __future__ import annotations

import optuna
import pytest

from raysearch_adapters.config import load_config
from raysearch_adapters.search.tuner import make_searcher


@pytest.mark.parametrize("sampler, names", [("tpe", ["dev_wer_new"]), ("random", ["dev_wer_new"]),
                                            ("nsga2", ["dev_wer_new", "degradation"])])
def test_the_study_names_its_objectives(tmp_path, sampler, names, recwarn):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    make_searcher(load_config([], ["search.name=named", f"search.sampler={sampler}"]), storage)
    study = optuna.load_study(study_name="named", storage=storage)
    assert study.metric_names == names
    assert not [w for w in recwarn if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
