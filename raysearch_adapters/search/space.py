"""The search space as an Optuna define-by-run function, and the sampler of each search mode.

The define-by-run functions only suggest (no computation) and are module-level: Ray
checkpoints the searcher with plain pickle, so they travel as ``functools.partial`` of a
module function with plain-data arguments, never as lambdas or closures.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Optional

import optuna

from raysearch_adapters.config import Config, ConfigError, GridConfig, SearchConfig, SpaceConfig
from raysearch_adapters.hparams import INT_PARAMS, NAMES as HPARAM_NAMES, applies_to
from raysearch_adapters.results.placement import Layout, PlacementError, parse_blocks
from raysearch_adapters.train.hparams import default_hparams

GRID_PARAMS = ("lr", "dim", "stochastic_depth")  # NeMo's sweep; the other params keep their fixed/default value


def listed_values(spec) -> list:
    """The values a categorical or fixed space entry can take (empty for a range or an unset entry)."""
    return [spec.value] if spec.kind() == "value" else list(spec.choices or [])


def check_space(space: SpaceConfig, num_blocks: Layout) -> dict:
    """Fail before any trial on what the config cannot catch: block specs that do not fit this model
    (``num_blocks``: its block count, or its ``[(stack, blocks), ...]`` layout).

    Returns each searched block spec with the block indices it selects."""
    spec = space.blocks
    selected = {}
    for i, blocks in enumerate(listed_values(spec)):
        try:
            selected[str(blocks)] = parse_blocks(str(blocks), num_blocks)
        except PlacementError as e:
            where = "search.space.blocks" + (".value" if spec.kind() == "value" else f".choices[{i}]")
            raise ConfigError(f"{where}: {e}") from None
    return selected


def _unsearched(name: str, space: SpaceConfig, defaults: dict):
    spec = getattr(space, name)
    return spec.value if spec.kind() == "value" else defaults[name]


def define_space(trial: optuna.Trial, space: SpaceConfig, defaults: dict) -> dict:
    """Suggest every searched hyperparameter on ``trial``; return the fixed ones (space value or default).

    In the hyperparameter table's order (:mod:`raysearch_adapters.hparams`): the adapter type comes first
    (define-by-run), the parameters of other types are not suggested, and None in the returned dict (their columns are null for this trial)."""
    fixed = {}
    for name in HPARAM_NAMES:
        spec = getattr(space, name)
        kind = spec.kind()
        if name != "type" and not applies_to(name, trial.params.get("type", fixed.get("type"))):
            fixed[name] = None
        elif kind in ("value", "unset"):
            fixed[name] = _unsearched(name, space, defaults)
        elif kind == "choices":
            trial.suggest_categorical(name, list(spec.choices))
        elif spec.allow_zero and not trial.suggest_categorical(f"{name}_on", [True, False]):
            fixed[name] = 0 if name in INT_PARAMS else 0.0  # off: the range is not suggested (define-by-run)
        elif name in INT_PARAMS:
            trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
        else:
            trial.suggest_float(name, float(spec.low), float(spec.high), log=spec.log)
    return fixed


def define_grid(trial: optuna.Trial, grid: GridConfig, space: SpaceConfig, defaults: dict) -> dict:
    """The NeMo-style grid: lr x dim x stochastic depth; every other param at its fixed value or default
    (None where the grid's adapter type does not have it)."""
    for name in GRID_PARAMS:
        trial.suggest_categorical(name, list(getattr(grid, name)))
    adapter_type = _unsearched("type", space, defaults)
    return {name: _unsearched(name, space, defaults) if applies_to(name, adapter_type) else None
            for name in HPARAM_NAMES if name not in GRID_PARAMS}


def space_function(cfg: Config) -> Callable[[optuna.Trial], dict]:
    """The picklable define-by-run function of ``cfg.search`` (the grid for ``sampler=grid``)."""
    defaults = default_hparams(cfg)
    if cfg.search.sampler == "grid":
        return functools.partial(define_grid, grid=cfg.search.grid, space=cfg.search.space, defaults=defaults)
    return functools.partial(define_space, space=cfg.search.space, defaults=defaults)


def start_points(search: SearchConfig) -> list:
    """``search.start_points`` as the Optuna parameters :func:`define_space` suggests (a value of 0 of an
    ``allow_zero`` range is its ``<name>_on`` switch off)."""
    points = []
    for point in search.start_points:
        params = {}
        for name, v in point.items():
            spec = getattr(search.space, name)
            if spec.kind() == "range" and spec.allow_zero:
                params[f"{name}_on"] = v != 0
                if v == 0:
                    continue
            params[name] = v
        points.append(params)
    return points


class TuneGridSampler(optuna.samplers.GridSampler):
    """GridSampler that does not ``study.stop()`` at the end of the grid.

    Outside ``study.optimize`` (Ray Tune asks and tells) ``stop`` raises inside ``tell``,
    before the trial's state is stored: the last grid trial would stay RUNNING. Tune's
    ``num_samples`` (capped at the grid size) ends the search instead."""

    def after_trial(self, study, trial, state, values) -> None:
        """Nothing to do: the trial budget, not the sampler, ends the search."""


def make_sampler(search: SearchConfig, num_trials: Optional[int] = None) -> optuna.samplers.BaseSampler:
    """Constrained TPE (default), random, the grid, or NSGA-II (multi-objective); seeded. ``num_trials``:
    the trials the search will ask for (default ``search.num_trials``)."""
    num_trials = search.num_trials if num_trials is None else num_trials
    if search.sampler == "tpe":
        # Optuna's default of 10 random start-up trials is most of a small budget. A searched adapter type
        # makes the space conditional (each type its own parameters): `group` lets multivariate TPE model
        # each type's parameters jointly instead of falling back to independent sampling.
        with warnings.catch_warnings():  # `group` is experimental since Optuna 2.8 and unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=search.seed,
                                              n_startup_trials=max(2, min(10, num_trials // 3)),
                                              multivariate=True, constant_liar=True,
                                              group=search.space.type.kind() == "choices")
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "grid":
        return TuneGridSampler({name: list(getattr(search.grid, name)) for name in GRID_PARAMS}, seed=search.seed)
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=search.seed, population_size=max(4, min(50, num_trials // 2)))
    raise ConfigError(f"search.sampler: got {search.sampler!r}; allowed: tpe, random, grid, nsga2")
