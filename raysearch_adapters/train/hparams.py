"""A trial's hyperparameters: the searched names, their defaults, and the adapter config they give."""

from __future__ import annotations

import dataclasses

from raysearch_adapters.config import AdapterConfig, Config


def default_hparams(cfg: Config) -> dict:
    """Every hyperparameter at the value of the ``adapter`` and ``train`` sections (the unsearched default); a
    trial's ``steps`` is the most it may train."""
    a, t = cfg.adapter, cfg.train
    # With a budget a trial may train at most to the finalists' end: the scheduler decides how far it goes.
    steps = cfg.trial_steps()
    return {"type": a.type, "dim": a.dim, "rank": a.rank, "alpha": a.alpha, "targets": a.targets, "blocks": a.blocks,
            "position": a.positions[0], "lr": t.lr, "dropout": a.dropout, "stochastic_depth": a.stochastic_depth,
            "l2_lambda": a.l2_lambda, "weight_decay": t.weight_decay, "steps": steps, "specaugment": t.specaugment,
            "replay": t.replay, "distill_weight": t.distill_weight}


def trial_adapter_config(hp: dict, base: AdapterConfig) -> AdapterConfig:
    """The adapter config of a trial: ``base`` with the trial's adapter hyperparameters (those of its type;
    the others are null in ``hp``)."""
    common = {"type": str(hp["type"]), "blocks": str(hp["blocks"]), "dropout": float(hp["dropout"])}
    if hp["type"] == "lora":
        # LoRA has no branch output for stochastic depth or the L2 term to act on.
        return dataclasses.replace(base, **common, rank=int(hp["rank"]), alpha=float(hp["alpha"]),
                                   targets=str(hp["targets"]), stochastic_depth=0.0, l2_lambda=0.0)
    return dataclasses.replace(base, **common, dim=int(hp["dim"]), positions=[str(hp["position"])],
                               stochastic_depth=float(hp["stochastic_depth"]), l2_lambda=float(hp["l2_lambda"]))
