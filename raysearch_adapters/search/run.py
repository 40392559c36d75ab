"""The ``search`` command: baseline, the Tune search, the winner chosen on dev, one final test evaluation.

Order matters for honesty and cost: features of the training and dev sets are computed once
here, in the driver (trials read the cache); the base model's dev WERs are measured once and
passed to every trial; trials never see the test manifests; after the search the winner is
chosen on dev only, and then the base model and the winner are evaluated once on test.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from pathlib import Path

import optuna
import ray
import ray.train
import torch
from ray import tune

from raysearch_adapters.adapters.state import load_adapter
from raysearch_adapters.config import Config, load_config, to_yaml
from raysearch_adapters.errors import UserError
from raysearch_adapters.fileio import atomic_write, atomic_write_text
from raysearch_adapters.models.registry import load_base_model
from raysearch_adapters.results.tables import EPOCHS_FILE, TRIALS_FILE, TRIALS_SCHEMA, read_rows
from raysearch_adapters.search.record import TablesRecorder, keep_only_trials
from raysearch_adapters.search.searcher import fail_abandoned_trials
from raysearch_adapters.results.select import closest_infeasible, pareto_front, select_winner
from raysearch_adapters.search.space import check_space
from raysearch_adapters.search.storage import check_shared_storage
from raysearch_adapters.search.summary import (BEST_ADAPTER_FILE, SUMMARY_FILE, build_summary, format_summary,
                                               write_summary)
from raysearch_adapters.search.tuner import TUNE_RUN_NAME, make_tuner
from raysearch_adapters.train.evaluate import evaluate, load_feature_set
from raysearch_adapters.train.objective import degradation_limit
from raysearch_adapters.train.worker import ADAPTER_FILE

CONFIG_FILE = "config.yaml"
OPTUNA_DB = "optuna.db"


def results_dir_of(cfg: Config) -> Path:
    """``results.dir/search.name``, absolute."""
    return (Path(cfg.results.dir).expanduser() / cfg.search.name).absolute()


def _ensure_demo_data(cfg: Config) -> None:
    demo = Path(cfg.data.demo_dir)
    manifests = (cfg.data.new_train, cfg.data.new_dev, cfg.data.original_dev, cfg.data.new_test,
                 cfg.data.original_test)
    if any(Path(m).is_relative_to(demo) and not Path(m).is_file() for m in manifests):
        from raysearch_adapters.data.demo import ensure_demo_corpus

        print(f"building the demo corpus in {demo} (first use only) ...", flush=True)
        ensure_demo_corpus(demo)


def _init_ray() -> None:
    if ray.is_initialized():
        return
    # Each report waits for the controller's poll of the workers (default every 2 s).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Tune saves its state after every trial checkpoint (tuner.make_tuner: num_to_keep=1), on
    # purpose: resumable; its warning that this happens often is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        # The dashboard's State API is what frees the reservations of trials ASHA stops (ray#54305).
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)


def _study_storage(cfg: Config, results_dir: Path) -> tuple[optuna.storages.RDBStorage, str]:
    url = cfg.results.study_storage or f"sqlite:///{results_dir / OPTUNA_DB}"
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as e:  # SQLAlchemy: bad URL, unreachable server, missing driver
        raise UserError(f"results.study_storage: cannot open {url!r}: {type(e).__name__}: {e}") from None
    from sqlalchemy.engine import make_url

    return storage, make_url(url).render_as_string(hide_password=True)


def _prepare_dir(cfg: Config, resume: bool) -> Config:
    results_dir = results_dir_of(cfg)
    config_file = results_dir / CONFIG_FILE
    if resume:
        if not config_file.is_file():
            raise UserError(f"--resume: {results_dir} holds no search (no {CONFIG_FILE}); run without --resume "
                            "to start it")
        # The interrupted search's own config: the same space, budget and storage.
        return load_config([config_file])
    if results_dir.exists() and any(results_dir.iterdir()):
        raise UserError(f"{results_dir} already holds a search; pass --resume to continue it, or choose another "
                        "search.name=...")
    results_dir.mkdir(parents=True, exist_ok=True)
    # Stored with an absolute results.dir: a resume from another directory finds the same folder.
    cfg = dataclasses.replace(cfg, results=dataclasses.replace(cfg.results, dir=str(results_dir.parent)))
    atomic_write_text(config_file, to_yaml(cfg))
    return cfg


def _copy_adapter(checkpoint_path: str, dest: Path) -> None:
    with ray.train.Checkpoint(checkpoint_path).as_directory() as d:
        atomic_write(dest, lambda tmp: shutil.copyfile(Path(d) / ADAPTER_FILE, tmp))


def run_search(cfg: Config, resume: bool = False) -> dict:
    """Run (or resume) the search of ``cfg``; returns the summary (also written to ``summary.json``)."""
    started = time.monotonic()
    _init_ray()
    check_shared_storage(cfg)  # before anything is written: a multi-node cluster needs shared folders
    # A bad or missing base model fails before anything is written or the demo corpus is built.
    model = None if resume else load_base_model(cfg.model)
    cfg = _prepare_dir(cfg, resume)
    results_dir = results_dir_of(cfg)
    storage_path = cfg.results.storage_path or str(results_dir)
    limit = degradation_limit(cfg.search.kappa, cfg.search.kappa_mode)
    _ensure_demo_data(cfg)
    device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
    if model is None:
        model = load_base_model(cfg.model)
    num_blocks = len(model.adaptable_blocks())
    check_space(cfg.search.space, num_blocks)
    model.to(device)

    def wer(m, feature_set) -> float:
        return evaluate(m, feature_set, max_batch_seconds=cfg.data.max_batch_seconds, device=device,
                        precision=cfg.train.precision)["wer"]

    dev_new = load_feature_set(cfg.data, model, cfg.data.new_dev, progress=True)
    dev_original = load_feature_set(cfg.data, model, cfg.data.original_dev, progress=True)
    load_feature_set(cfg.data, model, cfg.data.new_train, progress=True)  # trials read it from the cache
    baseline = {"dev": {"new": wer(model, dev_new), "original": wer(model, dev_original)}}
    print(f"base model dev WER: new domain {baseline['dev']['new']:.2f}, original domain "
          f"{baseline['dev']['original']:.2f} %; trials must keep the original-domain degradation <= {limit:g} "
          f"{'WER points' if cfg.search.kappa_mode == 'absolute' else '% of the base WER'}", flush=True)

    study_storage, study_url = _study_storage(cfg, results_dir)
    if not resume and cfg.search.name in optuna.study.get_all_study_names(study_storage):
        raise UserError(f"results.study_storage {study_url} already has a study named {cfg.search.name!r}; "
                        "pass --resume to continue it, or choose another search.name=...")
    metadata = {"kappa": str(cfg.search.kappa), "kappa_mode": cfg.search.kappa_mode,
                "degradation_limit": str(limit), "num_blocks": str(num_blocks)}
    recorder = TablesRecorder(str(results_dir), cfg.search.name, metadata)
    print(f"searching: {cfg.search.sampler} sampler, {cfg.search.num_trials} trials; live tables in {results_dir}; "
          f"study: optuna-dashboard {study_url}", flush=True)
    # A driver killed before Tune first saved its state leaves nothing to restore: start the trials
    # afresh (the study continues; the trials it had asked are failed as abandoned at the end).
    restore = resume and tune.Tuner.can_restore(f"{storage_path}/{TUNE_RUN_NAME}")
    trials_started = time.monotonic()
    make_tuner(cfg, baseline["dev"]["original"], storage_path, study_storage, recorder, restore).fit()
    trials_ended = time.monotonic()

    # Trials Tune knows are the search; rows of attempts a killed driver never saved go.
    trials = tune.ExperimentAnalysis(f"{storage_path}/{TUNE_RUN_NAME}").trials
    keep_only_trials(results_dir, [t.trial_id for t in trials], metadata)
    fail_abandoned_trials(optuna.load_study(study_name=cfg.search.name, storage=study_storage))
    rows = read_rows(results_dir / TRIALS_FILE, TRIALS_SCHEMA)
    winner = select_winner(rows, limit)

    # The only use of the test sets: the base model, then the winner, once each.
    test_sets = {"new": load_feature_set(cfg.data, model, cfg.data.new_test, progress=True),
                 "original": load_feature_set(cfg.data, model, cfg.data.original_test, progress=True)}
    baseline["test"] = {d: wer(model, s) for d, s in test_sets.items()}
    best_adapter = results_dir / BEST_ADAPTER_FILE
    winner_test = None
    if winner is not None:
        _copy_adapter(winner["checkpoint_path"], best_adapter)
        load_adapter(best_adapter, model)
        model.to(device)
        winner_test = {d: wer(model, s) for d, s in test_sets.items()}
    paths = {"results_dir": str(results_dir), "config": str(results_dir / CONFIG_FILE),
             "trials": str(results_dir / TRIALS_FILE), "epochs": str(results_dir / EPOCHS_FILE),
             "study_storage": study_url, "study_name": cfg.search.name, "tune_storage": storage_path,
             "best_adapter": str(best_adapter) if winner is not None else None,
             "summary": str(results_dir / SUMMARY_FILE)}
    ended = time.monotonic()
    timings = {"setup": trials_started - started, "trials": trials_ended - trials_started,
               "test": ended - trials_ended, "total": ended - started}
    summary = build_summary(cfg, rows, limit, baseline, winner, winner_test,
                            closest_infeasible(rows, limit) if winner is None else None, pareto_front(rows), paths,
                            num_blocks=num_blocks, timings=timings)
    write_summary(results_dir / SUMMARY_FILE, summary)
    print("\n" + format_summary(summary), flush=True)
    return summary


def cmd_search(args: argparse.Namespace) -> int:
    """``raysearch-adapters search [CONFIG] [key=value ...] [--resume]``."""
    from raysearch_adapters.cli import load_from_args

    run_search(load_from_args(args.config), resume=args.resume)
    return 0
