"""A trial's hyperparameters: the searched names, their defaults, and the adapter config they give."""

from __future__ import annotations

import dataclasses

from raysearch_adapters.config import AdapterConfig, Config


def default_hparams(cfg: Config) -> dict:
    """Every hyperparameter at the value of the ``adapter`` and ``train`` sections (the unsearched default)."""
    a, t = cfg.adapter, cfg.train
    return {"dim": a.dim, "blocks": a.blocks, "position": a.positions[0], "lr": t.lr, "dropout": a.dropout,
            "stochastic_depth": a.stochastic_depth, "l2_lambda": a.l2_lambda, "weight_decay": t.weight_decay,
            "steps": t.steps, "specaugment": t.specaugment}


def trial_adapter_config(hp: dict, base: AdapterConfig) -> AdapterConfig:
    """The adapter config of a trial: ``base`` with the trial's adapter hyperparameters."""
    return dataclasses.replace(base, dim=int(hp["dim"]), blocks=str(hp["blocks"]), positions=[str(hp["position"])],
                               dropout=float(hp["dropout"]), stochastic_depth=float(hp["stochastic_depth"]),
                               l2_lambda=float(hp["l2_lambda"]))
