"""The whole config: every section, and the checks and plans that need more than one of them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

from raysearch_adapters.config.checks import fail
from raysearch_adapters.config.search import SearchConfig
from raysearch_adapters.config.sections import (AdapterConfig, DataConfig, ModelConfig, PretrainConfig, ResourcesConfig,
                                                ResultsConfig, TrainConfig)
from raysearch_adapters.halving import HalvingError, HalvingPlan, halving_plan
from raysearch_adapters.schedule import HORIZON_FREE


@dataclass(frozen=True)
class MeasuredSet:
    """A set the search measures, as resolved from the config: a new-domain target or a protected set (with its
    kappa); ``dev_key`` / ``test_key`` are the config keys that name its manifests (for messages)."""

    name: str
    role: str  # target | protected
    dev: str
    test: str
    dev_key: str
    test_key: str
    kappa: Optional[float] = None
    kappa_mode: Optional[str] = None


@dataclass(frozen=True)
class Config:
    """Every section of a raysearch-adapters run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "search":  # the space's trials have adapter.type where the space leaves it unset
                self.search.validate(f.name, self.adapter.type)
            else:
                getattr(self, f.name).validate(f.name)
        if self.search.budget_steps:
            self._validate_budget()

    def _validate_budget(self) -> None:
        """A budget the search can spend: horizon-free trials, rungs that fit, a grid that fits."""
        s, t = self.search, self.train
        if t.lr_schedule not in HORIZON_FREE:
            fail("train.lr_schedule", t.lr_schedule, f"with search.budget_steps a trial may be continued past any "
                  f"length planned at its start; allowed: {', '.join(HORIZON_FREE)} (or search.budget_steps=0 for "
                  "fixed-length trials)")
        if s.space.steps.kind() != "unset":
            fail("search.space.steps", dataclasses.asdict(s.space.steps), "with search.budget_steps the budget "
                  "decides how long each trial trains; leave it unset (or set search.budget_steps=0)")
        grace = s.asha.grace_period * t.eval_every
        if s.budget_steps < grace:
            fail("search.budget_steps", s.budget_steps, f"must be 0 (no budget) or at least one rung: "
                  f"search.asha.grace_period x train.eval_every = {grace} steps")
        cohort = self.cohort_size_asked()
        try:
            plan = self.budget_plan()
        except HalvingError as e:
            if s.sampler == "grid":
                fail("search.sampler", s.sampler, f"the grid's {cohort} configs cannot be spent in "
                      f"search.budget_steps={s.budget_steps}: {e}; allowed: a larger budget, a smaller grid "
                      "(search.grid), or search.num_trials to cap it")
            fail("search.num_trials", s.num_trials, f"with search.budget_steps={s.budget_steps}: {e}; allowed: "
                  "fewer trials, 0 (as many as the budget holds), or a larger budget")
        if t.lr_schedule == "wsd" and t.decay_steps > plan.finalist_share:
            fail("train.decay_steps", t.decay_steps, f"the cool-down must fit in the finalists' share of the budget "
                  f"({plan.finalist_share} steps each after the halving); allowed: at most {plan.finalist_share}, or "
                  "a larger search.budget_steps")

    def target_sets(self) -> Tuple[MeasuredSet, ...]:
        """The new-domain sets, in order: ``data.targets``, else one named ``new`` (data.new_dev, data.new_test)."""
        d = self.data
        if not d.targets:
            return (MeasuredSet("new", "target", d.new_dev, d.new_test, "data.new_dev", "data.new_test"),)
        return tuple(MeasuredSet(s.name, "target", s.dev, s.test, f"data.targets[{i}].dev", f"data.targets[{i}].test")
                     for i, s in enumerate(d.targets))

    def protected_sets(self) -> Tuple[MeasuredSet, ...]:
        """The protected sets, in order, each with its kappa: ``data.protected`` (a null kappa or kappa_mode takes
        search's), else one named ``original`` (data.original_dev, data.original_test, search.kappa)."""
        d, s = self.data, self.search
        if not d.protected:
            return (MeasuredSet("original", "protected", d.original_dev, d.original_test, "data.original_dev",
                                "data.original_test", s.kappa, s.kappa_mode),)
        return tuple(MeasuredSet(p.name, "protected", p.dev, p.test, f"data.protected[{i}].dev",
                                 f"data.protected[{i}].test", s.kappa if p.kappa is None else p.kappa,
                                 p.kappa_mode or s.kappa_mode) for i, p in enumerate(d.protected))

    def measured_sets(self) -> Tuple[MeasuredSet, ...]:
        """Targets, then protected sets."""
        return self.target_sets() + self.protected_sets()

    def budget_plan(self) -> HalvingPlan:
        """How ``search.budget_steps`` is spent (raises HalvingError when it cannot be)."""
        s, t = self.search, self.train
        return halving_plan(s.budget_steps, s.asha.grace_period * t.eval_every, s.asha.reduction_factor,
                            s.finalists, t.eval_every, self.cohort_size_asked())

    def trial_steps(self) -> int:
        """The most steps a trial may train: train.steps, or with a budget the finalists' end."""
        if not self.search.budget_steps:
            return self.train.steps
        plan = self.budget_plan()
        return plan.milestones[-1] + plan.finalist_share

    def cohort_size_asked(self) -> Optional[int]:
        """The cohort the config asks for: the grid's size (capped by search.num_trials), search.num_trials,
        or None (the budget decides)."""
        s = self.search
        if s.sampler == "grid":
            return min(s.grid.size(), s.num_trials) if s.num_trials else s.grid.size()
        return s.num_trials or None
