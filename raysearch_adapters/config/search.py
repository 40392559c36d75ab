"""The search section: the space (one entry per row of the hyperparameter table), the grid, the rungs, the
start points and the search's own settings."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from raysearch_adapters.config.checks import check_choice, check_param, check_range, fail
from raysearch_adapters.hparams import BY_NAME as HPARAM, HPARAMS, TYPE_PARAMS, applies_to


@dataclass(frozen=True)
class ParamSpec:
    """One searched hyperparameter: a fixed ``value``, a list of ``choices``, or ``low``..``high``.

    In a YAML file or a ``search.space.NAME=...`` override an entry given whole replaces the
    default entry: ``{low: 4, high: 64}``, ``64`` (= ``{value: 64}``) or ``[8, 16]`` (= ``{choices:
    [8, 16]}``); ``search.space.NAME.FIELD=...`` changes one field of it."""

    value: Optional[Any] = None  # fixed: not searched
    choices: Optional[List[Any]] = None  # categorical
    low: Optional[float] = None  # range lower bound (inclusive)
    high: Optional[float] = None  # range upper bound (inclusive)
    log: bool = False  # sample the range on a log scale
    # A range that may also be exactly 0 (off), e.g. a log range of distillation weights: the
    # sampler first chooses on/off (an extra parameter '<name>_on'), then the value when on.
    allow_zero: bool = False

    def kind(self) -> str:
        """'value', 'choices', 'range', or 'unset' (all empty: the train/adapter section's value is used)."""
        if self.value is None and self.choices is None and self.low is None and self.high is None:
            return "unset"
        if self.value is not None:
            return "value"
        return "choices" if self.choices is not None else "range"

    def validate(self, key: str, name: str) -> None:
        """One form (value, choices or range), each value one that hyperparameter ``name`` takes."""
        kind = self.kind()
        if (self.value is not None) + (self.choices is not None) + (self.low is not None or self.high is not None) > 1:
            fail(key, dataclasses.asdict(self), "give exactly one of value, choices, or low and high")
        if kind == "value":
            check_param(f"{key}.value", name, self.value)
        elif kind == "choices":
            if not self.choices:
                fail(f"{key}.choices", list(self.choices), "needs at least one choice")
            for i, v in enumerate(self.choices):
                check_param(f"{key}.choices[{i}]", name, v)
        elif kind == "range":
            if not HPARAM[name].rangeable:
                fail(key, dataclasses.asdict(self), f"{name} takes a value or choices, not a low/high range")
            if self.low is None or self.high is None:
                fail(key, dataclasses.asdict(self), "a range needs both low and high")
            for bound in ("low", "high"):
                v = getattr(self, bound)
                check_param(f"{key}.{bound}", name, v)
                if self.log and v <= 0:
                    fail(f"{key}.{bound}", v, "must be > 0 (log scale)")
            if self.low > self.high:
                fail(f"{key}.low", self.low, f"must be <= high ({self.high})")
        if self.allow_zero and kind != "range":
            fail(f"{key}.allow_zero", True, "applies to a low/high range only")


def _fixed(v: Any) -> Any:
    return field(default_factory=lambda: ParamSpec(value=v))


def _space_validate(self, key: str) -> None:
    for f in dataclasses.fields(self):
        getattr(self, f.name).validate(f"{key}.{f.name}", f.name)


def _space_values(self, name: str, default: Any) -> List[Any]:
    """The values entry ``name`` can take: its value, its choices, or ``default`` (the section's value) when
    unset; a range's bounds."""
    spec = getattr(self, name)
    kind = spec.kind()
    if kind == "unset":
        return [default]
    if kind == "value":
        return [spec.value]
    return list(spec.choices) if kind == "choices" else [spec.low, spec.high]


# The search space: one ParamSpec per row of the hyperparameter table (raysearch_adapters.hparams), in its
# order, each defaulting to the row's space entry. Fixed entries are not searched, unset ones take the
# adapter/train field the row names. A row of some adapter types only is used by trials of those types.
SpaceConfig = dataclasses.make_dataclass(
    "SpaceConfig",
    [(h.name, ParamSpec, field(default_factory=lambda entry=h.space: ParamSpec(**entry))) for h in HPARAMS],
    namespace={"validate": _space_validate, "values": _space_values, "__module__": __name__,
               "__field_docs__": {h.name: f"{h.doc}; unset: the value of {h.field}" for h in HPARAMS},
               "__doc__": "The search space: one entry per searched hyperparameter (raysearch_adapters.hparams)."},
    frozen=True)


@dataclass(frozen=True)
class GridConfig:
    """The NeMo-style grid baseline (lr x dim x stochastic depth; other params fixed)."""

    lr: List[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])  # learning rates swept
    dim: List[int] = field(default_factory=lambda: [8, 32, 64])  # bottleneck widths swept
    stochastic_depth: List[float] = field(default_factory=lambda: [0.0, 0.2])  # stochastic depths swept

    def size(self) -> int:
        """Number of configs of the grid."""
        return math.prod(len(getattr(self, f.name)) for f in dataclasses.fields(self))

    def validate(self, key: str) -> None:
        for f in dataclasses.fields(self):
            values = getattr(self, f.name)
            if not values:
                fail(f"{key}.{f.name}", list(values), "needs at least one value")
            for i, v in enumerate(values):
                check_param(f"{key}.{f.name}[{i}]", f.name, v)


@dataclass(frozen=True)
class AshaConfig:
    """ASHA early stopping on dev new-domain WER (one rung per evaluation)."""

    enabled: bool = True  # without a budget: ASHA stops weak trials (false: every trial runs its steps)
    grace_period: int = 1  # evaluations before a trial can be stopped
    reduction_factor: int = 2  # each rung is this many times further; about 1/this of the trials go on

    def validate(self, key: str) -> None:
        check_range(f"{key}.grace_period", self.grace_period, 1, None)
        check_range(f"{key}.reduction_factor", self.reduction_factor, 2, None)


SAMPLERS = ("tpe", "random", "grid", "nsga2")


@dataclass(frozen=True)
class SearchConfig:
    """The search: sampler, budget, the degradation limit kappa and the space."""

    name: str = "demo"  # search id; results go to results.dir/name
    # The compute the search spends, in optimiser steps over all trials (0: no budget; every trial trains
    # train.steps, and ASHA stops the weak ones). A cohort of trials is halved rung by rung, then the
    # finalists train on while they improve (docs: "How a budget is spent").
    budget_steps: int = 8000
    # With a budget: the cohort size (0: as many as half the budget can halve). Without: the number of
    # trials. The grid sampler runs its whole grid, capped by this when set.
    num_trials: int = 0
    finalists: int = 2  # trials that train on after the halving, each with an equal share of what is left
    patience: int = 3  # evaluations without a better best evaluation after which a trial stops (0: never)
    sampler: str = "tpe"  # tpe (constrained) | random | grid | nsga2 (multi-objective)
    kappa: float = 1.0  # allowed degradation of original-domain dev WER
    kappa_mode: str = "absolute"  # absolute (WER points) | relative (fraction of base WER)
    # What is held to kappa: the degradation measured on original-domain dev (point), or its one-sided upper
    # confidence bound at search.confidence (upper; a paired bootstrap over the dev utterances, docs/protecting.md)
    feasibility: str = "point"
    confidence: float = 0.95  # of the degradation's bounds (each one-sided): in (0.5, 1)
    # Original-domain dev utterances an evaluation may newly loop on (its hypothesis repeats itself: zlib compression
    # ratio > 2.4, where the base model's does not) and stay feasible; null: loops are counted, not held to a limit
    max_new_loops: Optional[int] = 0
    seed: int = 0  # the sampler's seed
    asha: AshaConfig = field(default_factory=AshaConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    # Configs the sampler tries first (e.g. the adapter you use today, or a published recipe): each
    # maps searched parameters to a value of their space entry; the parameters it leaves out are
    # sampled. TPE learns from them like from any trial. Not for the grid, which has its own list.
    start_points: List[Dict[str, Any]] = field(default_factory=list)

    def _point_type(self, point: Dict[str, Any], adapter_type: str) -> Optional[str]:
        """The adapter type of a start point: its own ``type``, else the space's only one (None: the space
        searches the type and the point does not say)."""
        if "type" in point:
            return point["type"]
        types = self.space.values("type", adapter_type)
        return types[0] if len(types) == 1 else None

    def _validate_start_points(self, key: str, adapter_type: str) -> None:
        if self.start_points and self.sampler == "grid":
            fail(f"{key}.start_points", self.start_points, "applies to the tpe, random and nsga2 samplers; the "
                  "grid sweeps search.grid")
        for i, point in enumerate(self.start_points):
            for name, v in point.items():
                where = f"{key}.start_points[{i}].{name}"
                spec = getattr(self.space, name, None)
                if not isinstance(spec, ParamSpec):
                    fail(where, v, f"not a searched parameter; allowed: {', '.join(f.name for f in dataclasses.fields(self.space))}")
                kind = spec.kind()
                if kind in ("value", "unset"):
                    fail(where, v, f"search.space.{name} is not searched (it is {kind}); a start point sets "
                          "searched parameters only")
                check_param(where, name, v)
                if kind == "choices" and v not in spec.choices:
                    fail(where, v, f"allowed: one of search.space.{name}.choices {list(spec.choices)}")
                if kind == "range" and not (spec.low <= v <= spec.high or (spec.allow_zero and v == 0)):
                    fail(where, v, f"must be in search.space.{name}'s range [{spec.low}, {spec.high}]"
                          + (" or 0" if spec.allow_zero else ""))
            point_type = self._point_type(point, adapter_type)
            for name, v in point.items():
                owners = [t for t, names in TYPE_PARAMS.items() if name in names]
                if owners and point_type is None:
                    fail(f"{key}.start_points[{i}].{name}", v, f"a parameter of {'/'.join(owners)} adapters, and "
                          "search.space.type is searched: give the point's type too")
                if point_type is not None and not applies_to(name, point_type):
                    fail(f"{key}.start_points[{i}].{name}", v, f"a parameter of {'/'.join(owners)} adapters; this "
                          f"point's type is {point_type}")

    def _validate_types(self, key: str, adapter_type: str) -> None:
        grid_type = self.space.type.value if self.space.type.kind() == "value" else adapter_type
        if self.sampler == "grid" and not applies_to("dim", grid_type):
            fail(f"{key}.sampler", self.sampler, f"the NeMo-style grid sweeps dim and stochastic_depth, which "
                  f"{grid_type} adapters do not have; allowed with type {grid_type}: tpe, random, nsga2")

    def validate(self, key: str, adapter_type: str = "bottleneck") -> None:
        """``adapter_type``: adapter.type, the type of trials when the space leaves it unset."""
        if not self.name or "/" in self.name or self.name.startswith("."):
            fail(f"{key}.name", self.name, "must be a non-empty folder name without '/'")
        check_range(f"{key}.budget_steps", self.budget_steps, 0, None)
        check_range(f"{key}.num_trials", self.num_trials, 0 if self.budget_steps else 1, None)
        check_range(f"{key}.finalists", self.finalists, 1, None)
        check_range(f"{key}.patience", self.patience, 0, None)
        check_choice(f"{key}.sampler", self.sampler, SAMPLERS)
        check_range(f"{key}.kappa", self.kappa, 0, None)
        check_choice(f"{key}.kappa_mode", self.kappa_mode, ("absolute", "relative"))
        check_choice(f"{key}.feasibility", self.feasibility, ("point", "upper"))
        check_range(f"{key}.confidence", self.confidence, 0.5, 1, low_open=True, high_open=True)
        if self.max_new_loops is not None:
            check_range(f"{key}.max_new_loops", self.max_new_loops, 0, None)
        self.asha.validate(f"{key}.asha")
        self.space.validate(f"{key}.space")
        self.grid.validate(f"{key}.grid")
        self._validate_types(key, adapter_type)
        self._validate_start_points(key, adapter_type)
