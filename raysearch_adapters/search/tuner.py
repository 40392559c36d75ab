"""Ray Tune + Optuna + ASHA over Ray Train trials: the searcher, the scheduler, resources and resume.

A trial is a Tune *function trainable*. A one-worker trial (``resources.trial_runner=auto``)
trains inside it: the trial actor holds the trial's CPU/GPU and Tune reuses it for the next
trial, so process start-up and model/data loading are paid once per actor, not per trial.
A multi-worker trial (or any with ``trial_runner=ray_train``) makes its function trainable a
0.01-CPU trial driver that runs one ``TorchTrainer`` whose workers hold the real resources
(Train V2 inside Tune: metrics reach Tune through ``TuneReportCallback``). Tune does not
count those workers' resources, so ``max_concurrent_trials`` is derived so that every
running trial's workers fit.
"""

from __future__ import annotations

from typing import List, Optional, Union

import optuna
import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from raysearch_adapters.config import Config
from raysearch_adapters.errors import UserError
from raysearch_adapters.results.tables import HPARAM_NAMES
from raysearch_adapters.search.budget import BudgetScheduler, FinalMarker
from raysearch_adapters.search.record import TablesRecorder
from raysearch_adapters.search.searcher import ConstrainedOptunaSearch
from raysearch_adapters.search.space import make_sampler, space_function, start_points
from raysearch_adapters.search.stored_state import StoredStateWatcher
from raysearch_adapters.train.hparams import default_hparams
from raysearch_adapters.train.loop import num_evals
from raysearch_adapters.train.objective import degradation_limit
from raysearch_adapters.train.worker import (ASHA_METRIC, train_in_trial_actor, train_loop_per_worker,
                                             trial_loop_config)

TUNE_RUN_NAME = "tune"  # the Tune experiment folder under the storage path
TRAIN_RUNS = "train"  # folder of the Train runs (one per trial, named after the trial id)
OBJECTIVES = ("dev_wer_new", "degradation")  # NSGA-II minimises both


def run_trial(config: dict, context: dict) -> None:
    """Tune function trainable: train one trial's adapters here, or with a ``TorchTrainer`` (Train V2 inside Tune)."""
    cfg: Config = context["cfg"]
    r = cfg.resources
    loop_config = trial_loop_config(cfg, {k: config[k] for k in HPARAM_NAMES})
    if not r.uses_ray_train():
        train_in_trial_actor(loop_config)
        return
    trial_id = tune.get_context().get_trial_id()
    per_worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                               resources_per_worker=per_worker),
        # A stable name per trial: a trial restarted by --resume continues from its last checkpoint.
        run_config=ray.train.RunConfig(name=trial_id, storage_path=f"{context['storage_path']}/{TRAIN_RUNS}",
                                       callbacks=[TuneReportCallback()],
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                       failure_config=ray.train.FailureConfig(max_failures=0)))
    if not trainer.fit().metrics:
        # Without this a result lacking the metric would stop the whole Tune run, not just this trial.
        raise RuntimeError(f"trial {trial_id}: the training run ended without reporting an evaluation")


def max_concurrent_trials(cfg: Config, cluster: dict) -> int:
    """``resources.max_concurrent_trials``, or as many trials as the cluster's GPUs/CPUs hold (at most the budget)."""
    r = cfg.resources
    if r.use_gpu and cluster.get("GPU", 0) < r.gpus_per_worker * r.num_workers:
        raise UserError(f"resources.use_gpu=true: the Ray cluster has {cluster.get('GPU', 0):g} GPUs; a trial "
                        f"needs {r.gpus_per_worker * r.num_workers:g} (num_workers x gpus_per_worker); set "
                        "resources.use_gpu=false to run on CPU")
    if r.max_concurrent_trials:
        n = r.max_concurrent_trials
    elif r.use_gpu:
        n = int(cluster["GPU"] // (r.gpus_per_worker * r.num_workers) + 1e-9)
    elif r.cpus_per_worker > 0:
        n = int(cluster.get("CPU", 1) // (r.cpus_per_worker * r.num_workers) + 1e-9)
    else:
        n = int(cluster.get("CPU", 1))
    return max(1, min(n, num_trials(cfg)))


def num_trials(cfg: Config) -> int:
    """The trials of the search: the budget's cohort, or ``search.num_trials`` (at most the grid's size for the
    grid baseline)."""
    if cfg.search.budget_steps:
        return cfg.budget_plan().cohort
    if cfg.search.sampler == "grid":
        return min(cfg.search.num_trials, cfg.search.grid.size())
    return cfg.search.num_trials


def max_evals(cfg: Config) -> int:
    """Evaluations of the longest possible trial (ASHA's ``max_t``)."""
    spec = cfg.search.space.steps
    kind = spec.kind()
    if cfg.search.sampler == "grid" or kind in ("value", "unset"):
        longest = spec.value if kind == "value" else default_hparams(cfg)["steps"]
    else:
        longest = spec.high if kind == "range" else max(spec.choices)
    return num_evals(int(longest), cfg.train.eval_every)


def objective(cfg: Config) -> Union[str, List[str]]:
    """What the study minimises: dev new-domain WER, and (NSGA-II) the degradation beside it."""
    return list(OBJECTIVES) if cfg.search.sampler == "nsga2" else OBJECTIVES[0]


def make_searcher(cfg: Config, storage: optuna.storages.BaseStorage) -> ConstrainedOptunaSearch:
    """The constrained Optuna searcher over ``cfg.search.space`` (or the grid), its study in ``storage``."""
    metric = objective(cfg)
    # A resumed study had its start points queued when it was created.
    fresh = cfg.search.name not in optuna.study.get_all_study_names(storage)
    return ConstrainedOptunaSearch(space=space_function(cfg), metric=metric,
                                   mode=["min"] * len(metric) if isinstance(metric, list) else "min",
                                   sampler=make_sampler(cfg.search, num_trials(cfg)),
                                   study_name=cfg.search.name, storage=storage,
                                   points_to_evaluate=(start_points(cfg.search) if fresh else None) or None,
                                   limit=degradation_limit(cfg.search.kappa, cfg.search.kappa_mode),
                                   max_new_loops=cfg.search.max_new_loops)


def make_scheduler(cfg: Config, searcher: Optional[ConstrainedOptunaSearch] = None):
    """With a budget, synchronous halving and the finalists (``search.budget``); else ASHA on dev new-domain
    WER with infeasible trials ranked last, one rung per evaluation (FIFO when ``search.asha.enabled=false``)."""
    a = cfg.search.asha
    if cfg.search.budget_steps:
        return BudgetScheduler(cfg.budget_plan(), a.reduction_factor, cfg.train.eval_every, ASHA_METRIC,
                               degradation_limit(cfg.search.kappa, cfg.search.kappa_mode), sink=searcher,
                               max_new_loops=cfg.search.max_new_loops)
    if not a.enabled:
        return FIFOScheduler()
    top = max_evals(cfg)
    return ASHAScheduler(time_attr="eval_index", metric=ASHA_METRIC, mode="min", max_t=top,
                         grace_period=min(a.grace_period, top), reduction_factor=a.reduction_factor)


def trial_resources(cfg: Config) -> dict:
    """What one trial actor holds: a worker's CPUs/GPU when it trains itself, else a token CPU (its
    Train workers hold the real resources)."""
    r = cfg.resources
    if r.uses_ray_train():
        return {"cpu": 0.01}
    return {"cpu": r.cpus_per_worker, **({"gpu": r.gpus_per_worker} if r.use_gpu else {})}


def trainable(cfg: Config, storage_path: str):
    """The trial function with its fixed context and resources."""
    context = {"cfg": cfg, "storage_path": storage_path}
    return tune.with_resources(tune.with_parameters(run_trial, context=context), trial_resources(cfg))


def make_tuner(cfg: Config, storage_path: str, study_storage: optuna.storages.BaseStorage,
               recorder: TablesRecorder, resume: bool) -> tune.Tuner:
    """A new Tuner, or (``resume``) the interrupted one restored with its unfinished and errored trials."""
    fn = trainable(cfg, storage_path)
    if resume:
        # Errored trials stay errored: Optuna was told FAIL once and cannot be told otherwise (a trial
        # whose process died was already retried once, see FailureConfig below).
        return tune.Tuner.restore(f"{storage_path}/{TUNE_RUN_NAME}", trainable=fn, resume_unfinished=True,
                                  resume_errored=False)
    concurrent = max_concurrent_trials(cfg, ray.cluster_resources())
    searcher = make_searcher(cfg, study_storage)
    scheduler = make_scheduler(cfg, searcher)  # its state travels with the searcher's (resume)
    budget = isinstance(scheduler, BudgetScheduler)
    return tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_trials(cfg),
                                    # A trial paused at a rung still counts for Tune's concurrency limiter, which
                                    # would then never let the rest of the cohort start: with a budget, the
                                    # trials' resources alone bound how many run at once.
                                    max_concurrent_trials=None if budget else concurrent,
                                    # Trials training in their own actor run one after another in it.
                                    reuse_actors=not cfg.resources.uses_ray_train()),
        # A trial whose process dies (OOM, a killed worker) is retried once from its last checkpoint.
        run_config=tune.RunConfig(name=TUNE_RUN_NAME, storage_path=storage_path,
                                  # Checkpoints are deleted and outcomes told once the stored state has them.
                                  callbacks=[*([FinalMarker(scheduler)] if budget else []), recorder,
                                             StoredStateWatcher(searcher)],
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=1),
                                  # Tune deletes no checkpoint itself (it would delete one the stored state
                                  # still names); StoredStateWatcher deletes them once no resume can need them.
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
