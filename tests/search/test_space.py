"""The space as an Optuna define-by-run function: searched params are suggested, fixed ones returned."""

from __future__ import annotations

import pickle

import optuna
import pytest

from raysearch_adapters.config import ConfigError, load_config
from raysearch_adapters.search.space import check_space, make_sampler, space_function


def _ask(cfg, n=1, with_study=False):
    study = optuna.create_study(sampler=make_sampler(cfg.search))
    fn = pickle.loads(pickle.dumps(space_function(cfg)))  # Ray checkpoints the searcher with plain pickle
    out = []
    for _ in range(n):
        trial = study.ask()
        fixed = fn(trial)
        out.append((trial.params, fixed))
        study.tell(trial, 1.0)
    return (out, study) if with_study else out


def test_searched_params_are_suggested_and_the_rest_fixed_or_defaulted():
    cfg = load_config([], ["search.space.dim.choices=[4,8]", "search.space.steps.low=10", "search.space.steps.high=20",
                           "search.budget_steps=0", "search.num_trials=5", "search.space.dropout.value=0.1", "train.specaugment=false", "adapter.l2_lambda=0.01"])
    for params, fixed in _ask(cfg, 5):
        assert set(params) == {"dim", "blocks", "position", "lr", "steps", "replay", "distill_weight"}
        assert params["dim"] in (4, 8) and isinstance(params["steps"], int) and 10 <= params["steps"] <= 20
        assert cfg.search.space.lr.low <= params["lr"] <= cfg.search.space.lr.high
        assert 0.0 <= params["replay"] <= 0.5 and 5.0 <= params["distill_weight"] <= 100.0
        # space value, space value (default 0.0), and train/adapter sections for 'unset'
        assert fixed["dropout"] == 0.1 and fixed["l2_lambda"] == 0.0 and fixed["specaugment"] is False


def test_grid_sweeps_lr_dim_stochastic_depth_with_everything_else_at_defaults():
    cfg = load_config([], ["search.sampler=grid", "search.grid.lr=[0.001]", "search.grid.dim=[4,8]",
                           "search.grid.stochastic_depth=[0.0]", "adapter.blocks=top:2", "search.budget_steps=0",
                           "search.num_trials=10", "train.lr_schedule=cosine"])
    asked, study = _ask(cfg, 2, with_study=True)
    assert sorted(p["dim"] for p, _ in asked) == [4, 8]
    # the end of the grid must not leave the last trial RUNNING (GridSampler's study.stop() raises in tell)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for params, fixed in asked:
        assert set(params) == {"lr", "dim", "stochastic_depth"}
        assert fixed["blocks"] == "top:2" and fixed["position"] == "post" and fixed["steps"] == cfg.train.steps


def test_space_errors_name_the_key():
    cfg = load_config([], ["search.space.blocks.choices=[all,top:9]"])
    with pytest.raises(ConfigError, match=r"search.space.blocks.choices\[1\].*top:9"):
        check_space(cfg.search.space, num_blocks=6)
    with pytest.raises(ConfigError, match=r"search\.space\.blocks\.value: .*'window:2-9'.*the model has 6 blocks"):
        check_space(load_config([], ["search.space.blocks=window:2-9"]).search.space, num_blocks=6)


def test_a_range_that_allows_zero_switches_it_off_or_samples_it():
    cfg = load_config([], ["search.space.distill_weight={low: 1.0, high: 50.0, log: true, allow_zero: true}"])
    seen = set()
    for params, fixed in _ask(cfg, 12):
        if params["distill_weight_on"]:
            assert 1.0 <= params["distill_weight"] <= 50.0 and "distill_weight" not in fixed
        else:
            assert "distill_weight" not in params and fixed["distill_weight"] == 0.0
        seen.add(params["distill_weight_on"])
    assert seen == {True, False}
