"""A trial's hyperparameters: their unsearched values, and the typed config a trial trains with."""

from __future__ import annotations

import dataclasses

from raysearch_adapters.config import Config
from raysearch_adapters.hparams import HPARAMS
from raysearch_adapters.adapter_types import ADAPTER_TYPES


def default_hparams(cfg: Config) -> dict:
    """Every hyperparameter at the value of the config field it sets (the unsearched default)."""
    values = {h.name: h.from_config(cfg) for h in HPARAMS}
    # With a budget a trial may train at most to the finalists' end: the scheduler decides how far it goes.
    values["steps"] = cfg.trial_steps()
    return values


def trial_config(cfg: Config, hp: dict) -> Config:
    """``cfg`` with a trial's hyperparameters in the fields they set: what the trial trains with, typed. A
    hyperparameter its adapter type does not have (None in ``hp``) leaves its field as it is."""
    changes = {}
    for h in HPARAMS:
        if hp.get(h.name) is not None:
            changes.setdefault(h.section, {})[h.key] = h.to_field(hp[h.name])
    # The fields its type has no use for (LoRA: no branch output for stochastic depth or the L2 term to act on).
    zeroed = ADAPTER_TYPES[changes.get("adapter", {}).get("type", cfg.adapter.type)].zeroed
    changes.setdefault("adapter", {}).update({name: 0.0 for name in zeroed})
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)
                                       for section, fields in changes.items()})
