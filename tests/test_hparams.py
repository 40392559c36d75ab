"""The hyperparameter table: every place a searched hyperparameter shows up is derived from its row."""

from __future__ import annotations

import dataclasses

import pytest

from raysearch_adapters.config import Config, ConfigError, SpaceConfig, load_config
from raysearch_adapters.dashboard.data import TABLE_COLUMNS
from raysearch_adapters.hparams import HPARAMS, INT_PARAMS, NAMES, RANGE_PARAMS, TYPE_PARAMS
from raysearch_adapters.results.tables import TRIALS_SCHEMA
from raysearch_adapters.train.hparams import default_hparams, trial_config


def test_each_row_sets_a_config_field_of_its_kind():
    cfg = Config()
    for h in HPARAMS:
        section = getattr(cfg, h.section)
        assert h.key in {f.name for f in dataclasses.fields(section)}, h.field
        value = h.from_config(cfg)
        assert isinstance(value, h.kind) and h.rule(value) is None, (h.name, value)


def test_the_space_the_results_and_the_dashboard_follow_the_table():
    assert tuple(f.name for f in dataclasses.fields(SpaceConfig)) == NAMES
    assert [name for name in TRIALS_SCHEMA.names if name in NAMES] == list(NAMES)
    assert [k for k, _ in TABLE_COLUMNS if k in NAMES] == list(NAMES)
    docs = {h.name: h.doc for h in HPARAMS}
    assert all(TRIALS_SCHEMA.field(n).metadata[b"doc"].decode() == docs[n] for n in NAMES)
    assert set(INT_PARAMS) <= set(RANGE_PARAMS) and "type" not in RANGE_PARAMS and "blocks" not in RANGE_PARAMS
    assert TYPE_PARAMS["lora"] == ("rank", "alpha", "targets")
    assert TYPE_PARAMS["bottleneck"] == TYPE_PARAMS["parallel"] == ("dim", "position", "stochastic_depth", "l2_lambda")


def test_a_trial_trains_with_its_values_in_typed_fields():
    cfg = load_config([])
    hp = {**default_hparams(cfg), "dim": 128, "position": "ffn", "lr": 0.005, "replay": 0.25, "distill_weight": 7,
          "steps": 1200}
    trial = trial_config(cfg, hp)
    assert (trial.adapter.dim, trial.adapter.positions, trial.train.lr) == (128, ["ffn"], 0.005)
    assert (trial.train.replay, trial.train.steps) == (0.25, 1200)
    assert isinstance(trial.train.distill_weight, float) and trial.train.distill_weight == 7.0
    # a LoRA trial: the bottleneck's parameters are null and leave their fields alone, its own are set
    lora = trial_config(cfg, {**hp, "type": "lora", "rank": 4, "alpha": 8.0, "targets": "q,v", "dim": None,
                              "position": None, "stochastic_depth": None, "l2_lambda": None})
    assert (lora.adapter.type, lora.adapter.rank, lora.adapter.dim) == ("lora", 4, cfg.adapter.dim)
    assert lora.adapter.stochastic_depth == lora.adapter.l2_lambda == 0.0


def test_one_rule_checks_a_value_wherever_it_is_given():
    """The section field and the space entry of a hyperparameter fail with the same rule."""
    for key in ("train.replay=1.5", "search.space.replay=1.5", "search.space.replay=[0.1,1.5]"):
        with pytest.raises(ConfigError, match=r"must be a number in \[0, 1\)"):
            load_config([], [key])
    for key in ("adapter.dim=0", "search.space.dim=0"):
        with pytest.raises(ConfigError, match="must be a whole number >= 1"):
            load_config([], [key])
