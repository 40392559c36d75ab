"""The search space as an Optuna define-by-run function, and the sampler of each search mode.

The define-by-run functions only suggest (no computation) and are module-level: Ray
checkpoints the searcher with plain pickle, so they travel as ``functools.partial`` of a
module function with plain-data arguments, never as lambdas or closures.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import optuna

from raysearch_adapters.results.placement import PlacementError, parse_blocks
from raysearch_adapters.config import Config, ConfigError, GridConfig, SearchConfig, SpaceConfig
from raysearch_adapters.results.tables import HPARAM_NAMES
from raysearch_adapters.train.hparams import default_hparams

INT_PARAMS = ("dim", "steps")  # ranges of these are sampled as integers
CHOICE_ONLY = ("blocks", "position", "specaugment")  # not numbers: a value or choices, never a range
GRID_PARAMS = ("lr", "dim", "stochastic_depth")  # NeMo's sweep; the other params keep their fixed/default value


def check_space(space: SpaceConfig, num_blocks: int) -> None:
    """Fail before any trial on what the config cannot catch: ranges of non-numbers, block specs of this model."""
    for name in CHOICE_ONLY:
        if getattr(space, name).kind() == "range":
            raise ConfigError(f"search.space.{name}: got a low/high range; {name} takes a value or choices")
    spec = space.blocks
    for i, blocks in enumerate([spec.value] if spec.kind() == "value" else list(spec.choices or [])):
        try:
            parse_blocks(str(blocks), num_blocks)
        except PlacementError as e:
            where = "search.space.blocks" + ("" if spec.kind() == "value" else f".choices[{i}]")
            raise ConfigError(f"{where}: {e}") from None


def _unsearched(name: str, space: SpaceConfig, defaults: dict):
    spec = getattr(space, name)
    return spec.value if spec.kind() == "value" else defaults[name]


def define_space(trial: optuna.Trial, space: SpaceConfig, defaults: dict) -> dict:
    """Suggest every searched hyperparameter on ``trial``; return the fixed ones (space value or default)."""
    fixed = {}
    for name in HPARAM_NAMES:
        spec = getattr(space, name)
        kind = spec.kind()
        if kind in ("value", "unset"):
            fixed[name] = _unsearched(name, space, defaults)
        elif kind == "choices":
            trial.suggest_categorical(name, list(spec.choices))
        elif name in INT_PARAMS:
            trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
        else:
            trial.suggest_float(name, float(spec.low), float(spec.high), log=spec.log)
    return fixed


def define_grid(trial: optuna.Trial, grid: GridConfig, space: SpaceConfig, defaults: dict) -> dict:
    """The NeMo-style grid: lr x dim x stochastic depth; every other param at its fixed value or default."""
    for name in GRID_PARAMS:
        trial.suggest_categorical(name, list(getattr(grid, name)))
    return {name: _unsearched(name, space, defaults) for name in HPARAM_NAMES if name not in GRID_PARAMS}


def grid_size(grid: GridConfig) -> int:
    """Number of configs of the grid."""
    return math.prod(len(getattr(grid, name)) for name in GRID_PARAMS)


def space_function(cfg: Config) -> Callable[[optuna.Trial], dict]:
    """The picklable define-by-run function of ``cfg.search`` (the grid for ``sampler=grid``)."""
    defaults = default_hparams(cfg)
    if cfg.search.sampler == "grid":
        return functools.partial(define_grid, grid=cfg.search.grid, space=cfg.search.space, defaults=defaults)
    return functools.partial(define_space, space=cfg.search.space, defaults=defaults)


class TuneGridSampler(optuna.samplers.GridSampler):
    """GridSampler that does not ``study.stop()`` at the end of the grid.

    Outside ``study.optimize`` (Ray Tune asks and tells) ``stop`` raises inside ``tell``,
    before the trial's state is stored: the last grid trial would stay RUNNING. Tune's
    ``num_samples`` (capped at the grid size) ends the search instead."""

    def after_trial(self, study, trial, state, values) -> None:
        """Nothing to do: the trial budget, not the sampler, ends the search."""


def make_sampler(search: SearchConfig) -> optuna.samplers.BaseSampler:
    """Constrained TPE (default), random, the grid, or NSGA-II (multi-objective); seeded."""
    if search.sampler == "tpe":
        # Optuna's default of 10 random start-up trials is most of a small budget.
        return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=max(2, min(10, search.num_trials // 3)),
                                          multivariate=True, constant_liar=True)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "grid":
        return TuneGridSampler({name: list(getattr(search.grid, name)) for name in GRID_PARAMS}, seed=search.seed)
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=search.seed, population_size=max(4, min(50, search.num_trials // 2)))
    raise ConfigError(f"search.sampler: got {search.sampler!r}; allowed: tpe, random, grid, nsga2")
