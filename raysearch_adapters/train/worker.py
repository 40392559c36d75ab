"""One trial's training process, run two ways with one body (:func:`run_trial_worker`):

* :func:`train_loop_per_worker`: the Ray Train ``train_loop_per_worker`` of a
  ``TorchTrainer`` (the only Ray Train call site): multi-worker (DDP) trials, or every
  trial with ``resources.trial_runner=ray_train``.
* :func:`train_in_trial_actor`: a one-worker trial trains inside its Tune trial actor.
  Tune reuses that actor for the next trial (``reuse_actors``), so the process, the
  imports, the CUDA context, the frozen base model and the memory-mapped feature sets are
  paid for once per actor instead of once per trial (``bench/ray_overhead.py`` measures both runners).

Each run loads the frozen base model and the cached feature sets (the driver computed
them once per search: no worker decodes audio), injects the trial's adapters and runs the
plain-PyTorch :func:`~raysearch_adapters.train.loop.train_adapters`. With several workers
the adapter gradients are averaged and the dev error counts summed over ranks, so rank 0's
report (the only one Ray Tune sees) carries the WER of the whole dev sets. Rank 0 also
writes the adapter-only checkpoint of every evaluation; a restarted trial continues from it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import ray.train
import ray.train.torch
from ray import tune
import torch

from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.adapters.state import base_fingerprint, load_adapter, save_adapter
from raysearch_adapters.config import Config, to_dict
from raysearch_adapters.data.cache import load_feature_set
from raysearch_adapters.models.base import Backbone
from raysearch_adapters.models.registry import backbone_class, load_base_model
from raysearch_adapters.train.hparams import trial_config
from raysearch_adapters.train.loop import Protected, TrainSets, UtteranceErrors, base_dev_errors, train_adapters
from raysearch_adapters.train.objective import asha_score_of, degradation_limit
from raysearch_adapters.train.prefix import load_prefix_set, load_teacher_set, measurement_block, view_from

ADAPTER_FILE = "adapter.pt"  # the latest adapter weights + config (adapters.state format): what a resume loads
TRIAL_BEST_ADAPTER_FILE = "best_adapter.pt"  # the trial's best evaluation's adapter: its result, the winner's file
STATE_FILE = "train_state.pt"  # optimizer state, step, evaluation index and best evaluation, to resume the trial
ASHA_METRIC = "asha_score"  # dev new-domain WER, infeasible trials ranked last (objective.asha_score)


def trial_loop_config(cfg: Config, hp: dict) -> dict:
    """The ``train_loop_config`` of a trial: the typed config it trains with (``cfg`` with the trial's
    hyperparameters in the fields they set, :func:`~raysearch_adapters.train.hparams.trial_config`), and its
    hyperparameters as searched (stored with its adapter). The test manifests are blanked: a trial cannot
    touch them."""
    no_test = replace(cfg, data=replace(cfg.data, new_test="", original_test="",
                                        targets=[replace(s, test="") for s in cfg.data.targets],
                                        protected=[replace(s, test="") for s in cfg.data.protected]))
    fraction = cfg.resources.gpu_memory_fraction or min(cfg.resources.gpus_per_worker, 1.0)
    return {"cfg": trial_config(no_test, hp), "hp": dict(hp),
            "gpu_memory_fraction": fraction if cfg.resources.use_gpu else 0.0,
            "threads": cfg.resources.worker_threads()}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return str(device)


# What a process keeps between the trials it runs (a reused Tune trial actor runs many):
# the pristine base model, its fingerprint, and the opened feature sets.
_BASE_MODELS: Dict[str, Tuple[Backbone, str]] = {}
_OPENED_SETS: Dict[tuple, object] = {}


def _model_key(cfg: Config) -> str:
    key = {"model": to_dict(cfg)["model"], **backbone_class(cfg.model.name).weights_key(cfg.model)}
    return json.dumps(key, sort_keys=True)


def base_model(cfg: Config) -> Tuple[Backbone, str]:
    """A fresh copy of the frozen base model (adapters get injected into it) and its fingerprint.

    Loaded from disk once per process; later trials in the same process copy it."""
    key = _model_key(cfg)
    if key not in _BASE_MODELS:
        model = load_base_model(cfg.model)
        _BASE_MODELS.clear()  # one base model per search: do not hold on to an earlier one
        _BASE_MODELS[key] = (model, base_fingerprint(model))
    model, fingerprint = _BASE_MODELS[key]
    return copy.deepcopy(model), fingerprint


def _opened(key: tuple, load: Callable[[], object]):
    """``load()`` once per process for ``key``; cached sets are memory-mapped, so keeping them open is cheap."""
    if key not in _OPENED_SETS:
        _OPENED_SETS[key] = load()
    return _OPENED_SETS[key]


def feature_set(cfg: Config, model: Backbone, manifest: str, pool: bool = False, require_text: bool = True,
                progress: bool = False):
    """The cached features of ``manifest`` (``pool``: its ``data.pool_hours`` subset), opened once per process."""
    stat = os.stat(manifest)
    hours = cfg.data.pool_hours if pool else 0.0
    key = ("features", manifest, json.dumps(model.featurizer_key(), sort_keys=True), stat.st_mtime, stat.st_size,
           hours, require_text)
    return _opened(key, lambda: load_feature_set(cfg.data, model, manifest, progress=progress, max_hours=hours,
                                                 require_text=require_text))


def prefix_set(cfg: Config, model: Backbone, fingerprint: str, features, k: int, progress: bool = False):
    """The frozen-prefix outputs (blocks < ``k``) of a feature set, opened once per process and base model."""
    key = ("prefix", str(features.path), features.key, fingerprint, k)
    return _opened(key, lambda: load_prefix_set(features, model, k, cfg.data.cache_dir, progress=progress))


def teacher_set(cfg: Config, model: Backbone, fingerprint: str, features, progress: bool = False,
                k: Optional[int] = None):
    """The distillation teacher's cached outputs on a feature set, opened once per process and base model;
    with ``k``, computed from the set's frozen-prefix cache at k (the same outputs)."""
    key = ("teacher", str(features.path), features.key, fingerprint)

    def load():
        prefix = None if k is None else prefix_set(cfg, model, fingerprint, features, k, progress)
        return load_teacher_set(features, model, cfg.data.cache_dir, progress=progress, prefix=prefix, k=k)

    return _opened(key, load)


def training_sets(cfg: Config, model: Backbone, fingerprint: str, replay: bool, distill: bool,
                  progress: bool = False, k: Optional[int] = None) -> TrainSets:
    """The new-domain training set, and the replay and distillation pools (with the teacher) when asked for.

    ``k``: the block every trial of the search is measured from, when there is one: the sets'
    frozen-prefix caches at k are built too, and the teacher runs on them, so that the frozen
    prefix runs once per utterance in the whole search."""
    sets = TrainSets(new=feature_set(cfg, model, cfg.data.new_train, progress=progress))
    if replay:
        sets.replay = feature_set(cfg, model, cfg.data.replay_manifest, pool=True, progress=progress)
    if distill:
        sets.distill = feature_set(cfg, model, cfg.data.distill_manifest, pool=True, require_text=False,
                                   progress=progress)
        sets.teacher = teacher_set(cfg, model, fingerprint, sets.distill, progress=progress, k=k)
    if k is not None:
        for s in (sets.new, sets.replay, sets.distill):
            if s is not None:
                prefix_set(cfg, model, fingerprint, s, k, progress)
    return sets


def _on_prefix(cfg: Config, model: Backbone, fingerprint: str, sets: TrainSets, k: int) -> TrainSets:
    """The same sets as frozen-prefix outputs at block ``k`` (the teacher's outputs stay as they are)."""
    def at_k(s):
        return None if s is None else prefix_set(cfg, model, fingerprint, s, k)

    return TrainSets(new=at_k(sets.new), replay=at_k(sets.replay), distill=at_k(sets.distill), teacher=sets.teacher)


# The base model's per-utterance errors on original-domain dev per measurement path, measured once per process.
_BASE_ERRORS: Dict[tuple, UtteranceErrors] = {}


# (metrics, folder holding this evaluation's checkpoint files or None) -> hands both to Ray
SendReport = Callable[[dict, Optional[str]], None]


def cap_gpu_memory(device: torch.device, fraction: float) -> None:
    """Ray shares a GPU between trials but does not police its memory: on CUDA, a fraction < 1 caps what this
    process's caching allocator may hold (an allocation past it raises torch.OutOfMemoryError in this trial
    instead of starving the trials beside it)."""
    if device.type == "cuda" and 0 < fraction < 1.0:
        torch.cuda.set_per_process_memory_fraction(fraction, device)


def set_threads(n: int) -> None:
    """Compute with ``n`` torch threads in this process (its intra-op pool, OpenMP's and MKL's with it), and let
    any process it starts inherit as many (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``).

    A trial worker runs with its CPU share (``resources.worker_threads``), not with what it inherited: the
    environment of a cluster's container or of the driver can say every core of the machine, and threads that
    outnumber the worker's CPUs wait on each other at every parallel region whenever another trial or process
    holds a core."""
    torch.set_num_threads(n)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


@contextlib.contextmanager
def threads_while_trials_run():
    """The driver computes with one torch thread while the trials run (it only waits on them and writes the
    tables); its own pool of one thread per core would otherwise keep spinning on cores the trials hold. The
    driver's thread count is restored after (it evaluates the winner on the test sets with all of them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_trial_worker(config: dict, *, rank: int, world_size: int, device: torch.device, checkpoint,
                     send_report: SendReport, all_reduce=None) -> None:
    """Train one trial's adapters in this process (see :func:`trial_loop_config` for ``config``).

    ``checkpoint`` is the Ray checkpoint to resume from (or None); ``send_report`` passes each
    evaluation to Ray Train or Ray Tune."""
    cfg: Config = config["cfg"]
    hp = config["hp"]  # as searched: stored with the adapter; the trial reads its typed fields in cfg
    cap_gpu_memory(device, config["gpu_memory_fraction"])
    set_threads(config["threads"])
    torch.manual_seed(cfg.train.seed)
    model, fingerprint = base_model(cfg)
    sets = training_sets(cfg, model, fingerprint, cfg.train.replay > 0, cfg.train.distill_weight > 0)
    dev_sets = {s.name: feature_set(cfg, model, s.dev) for s in cfg.measured_sets()}
    adapter_cfg = cfg.adapter
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            handle, _, _ = load_adapter(Path(d) / ADAPTER_FILE, model)
            resume = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    else:
        handle = inject_adapters(model, adapter_cfg)
    model.to(device)
    # The frozen blocks below the lowest adapter run once per utterance (cached, shared by every
    # trial with the same k); this trial trains and evaluates blocks k.. only.
    k = measurement_block(handle, cfg.train.prefix_cache, cfg.train.specaugment)
    if k is not None:
        sets = _on_prefix(cfg, model, fingerprint, sets, k)
        dev_sets = {name: prefix_set(cfg, model, fingerprint, s, k) for name, s in dev_sets.items()}
    view = view_from(model, k)
    # The base's errors on exactly this trial's path and precision, per protected set: a zero-init adapter shows
    # degradation 0.
    protected = []
    for p in cfg.protected_sets():
        base_key = (fingerprint, k, cfg.train.precision, device.type, dev_sets[p.name].key, world_size)
        if base_key not in _BASE_ERRORS:
            _BASE_ERRORS[base_key] = base_dev_errors(view, handle, {p.name: dev_sets[p.name]},
                                                     cfg.data.max_batch_seconds, cfg.train.precision, rank,
                                                     world_size, all_reduce)[p.name]
        protected.append(Protected(p.name, _BASE_ERRORS[base_key], degradation_limit(p.kappa, p.kappa_mode),
                                   p.kappa_mode))
    static = {"adapter_params": handle.num_params, "adapter_percent": handle.percent_of_base,
              "device": _device_name(device), "threads": torch.get_num_threads(),
              "node_id": ray.get_runtime_context().get_node_id()}
    limit = degradation_limit(cfg.search.kappa, cfg.search.kappa_mode)

    def report(metrics: dict, state: dict) -> None:
        metrics = {**metrics, **static,
                   ASHA_METRIC: asha_score_of(metrics, limit, cfg.search.max_new_loops)}
        if rank != 0:
            send_report(metrics, None)
            return
        with tempfile.TemporaryDirectory() as d:
            save_adapter(os.path.join(d, ADAPTER_FILE), handle, adapter_cfg, fingerprint,
                         extra={"hp": dict(hp), "metrics": metrics})
            # The trial's result: its best evaluation's weights, and that evaluation's metrics.
            save_adapter(os.path.join(d, TRIAL_BEST_ADAPTER_FILE), handle, adapter_cfg, fingerprint,
                         extra={"hp": dict(hp), "metrics": dict(state["best"]),
                                "base_dev_wer_original": metrics["base_dev_wer_original"]},
                         state_dict=state["best_state_dict"])
            torch.save(state, os.path.join(d, STATE_FILE))
            send_report(metrics, d)

    train_adapters(view, handle, sets, dev_sets, cfg.train, None, report, limit=limit,
                   targets=[t.name for t in cfg.target_sets()], protected=protected,
                   max_new_loops=cfg.search.max_new_loops, patience=cfg.search.patience, kappa_mode=cfg.search.kappa_mode,
                   feasibility=cfg.search.feasibility, confidence=cfg.search.confidence, eval_batch_seconds=cfg.data.max_batch_seconds,
                   specaugment_cfg=cfg.data.specaugment, resume=resume, rank=rank, world_size=world_size,
                   all_reduce=all_reduce)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: one rank of a ``TorchTrainer`` trial."""
    context = ray.train.get_context()
    world_size = context.get_world_size()

    def send_report(metrics: dict, folder: Optional[str]) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)

    run_trial_worker(config, rank=context.get_world_rank(), world_size=world_size,
                     device=ray.train.torch.get_device(), checkpoint=ray.train.get_checkpoint(),
                     send_report=send_report, all_reduce=torch.distributed.all_reduce if world_size > 1 else None)


def train_in_trial_actor(config: dict) -> None:
    """A one-worker trial inside its Tune trial actor (which holds the trial's CPU/GPU resources)."""
    def send_report(metrics: dict, folder: Optional[str]) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

    # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU, so it is cuda:0 here.
    use_gpu = config["gpu_memory_fraction"] > 0 and torch.cuda.is_available()
    device = torch.device("cuda:0" if use_gpu else "cpu")
    run_trial_worker(config, rank=0, world_size=1, device=device, checkpoint=tune.get_checkpoint(),
                     send_report=send_report)
