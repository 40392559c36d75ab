"""A search from end to end: checks, baseline, the Tune search, the winner chosen on dev, one final test evaluation.

Order matters for honesty and cost: everything that can be checked is checked, and every
cache a trial reads (features of the training and dev sets, the replay and distillation
pools, the distillation teacher) is built, before the results folder is written; the base
model's dev WERs are measured once here; trials never see the test manifests; after the
search the winner is chosen on dev only, and then the base model and the winner are
evaluated once on test, through the same path (blocks and precision) the winner trained on;
their transcripts of the dev and test sets go to ``hypotheses.parquet``.

Ctrl-C (SIGINT) or SIGTERM stops a search cleanly: the running trials stop, Tune saves its
state, nothing is evaluated on test, ``summary.json`` says "interrupted", and ``--resume``
continues it with every trial counted once.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pickletools
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

import optuna
import ray
import ray.train
import torch
from ray import tune

from raysearch_adapters.adapters.state import base_fingerprint, load_adapter
from raysearch_adapters.config import Config, load_config, to_dict, to_yaml
from raysearch_adapters.data.cache import load_feature_set
from raysearch_adapters.data.demo import ensure_demo_corpus
from raysearch_adapters.data.source import dataset_options
from raysearch_adapters.errors import UserError, first_line
from raysearch_adapters.fileio import atomic_write, atomic_write_text
from raysearch_adapters.models.base import block_layout
from raysearch_adapters.models.registry import load_base_model
from raysearch_adapters.results.hypotheses import HYPOTHESES_FILE, HYPOTHESES_SCHEMA, loop_counts, set_wers
from raysearch_adapters.results.layout import BEST_ADAPTER_FILE, CONFIG_FILE, OPTUNA_DB, SUMMARY_FILE
from raysearch_adapters.results.select import closest_infeasible, pareto_front, select_winner
from raysearch_adapters.results.tables import (EPOCHS_FILE, EPOCHS_SCHEMA, TRIALS_FILE, TRIALS_SCHEMA, read_rows,
                                               write_table)
from raysearch_adapters.search.preflight import may_be_positive, preflight, shared_measurement_block
from raysearch_adapters.search.record import TablesRecorder, keep_only_trials
from raysearch_adapters.search.searcher import fail_abandoned_trials, tell_finished_trials
from raysearch_adapters.search.storage import check_shared_storage
from raysearch_adapters.search.stored_state import LAST_GOOD, checkpoint_folder, keep_only_checkpoint, state_files
from raysearch_adapters.search.summary import build_summary, format_summary, set_label, set_roles, write_summary
from raysearch_adapters.search.tuner import TUNE_RUN_NAME, make_tuner, num_trials, objective
from raysearch_adapters.train.evaluate import evaluate
from raysearch_adapters.train.objective import degradation_bounds, degradation_limit, utterances_to_resolve
from raysearch_adapters.train.prefix import inputs_from, measurement_block, view_from
from raysearch_adapters.train.transcripts import decode_sets
from raysearch_adapters.train.worker import TRIAL_BEST_ADAPTER_FILE, threads_while_trials_run, training_sets

INTERRUPTED_EXIT = 130  # the shell's status for a process stopped by SIGINT
# Keys a resumed search may be given again: they only say where the search is.
_RESUME_LOCATORS = ("search.name", "results.dir")


def results_dir_of(cfg: Config) -> Path:
    """``results.dir/search.name``, absolute."""
    return (Path(cfg.results.dir).expanduser() / cfg.search.name).absolute()


def check_results_dir(cfg: Config, resume: bool = False) -> None:
    """Refuse, before any cache is built, a results folder the search could not write: a part of the path that
    is a file, a name longer than the file system takes, a folder this process cannot create files in (tried for
    real: permissions, a read-only mount, a full disk). A new search's folder is created by :func:`_prepare_dir`."""
    results_dir = results_dir_of(cfg)
    where = f"results.dir/search.name ({results_dir})"
    existing = results_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        key = "search.name" if existing == results_dir else "results.dir"
        raise UserError(f"{key}: {existing} is a file, not a folder; {where} must be a folder the search can create "
                        "or write to")
    name_max = os.pathconf(existing, "PC_NAME_MAX")
    for part in results_dir.relative_to(existing).parts:
        if len(part.encode()) > name_max:
            key = "search.name" if part == cfg.search.name else "results.dir"
            raise UserError(f"{key}: the name {part[:40]!r}... is {len(part.encode())} bytes; the file system of "
                            f"{existing} takes at most {name_max}")
    length, path_max = len(str(results_dir).encode()), os.pathconf(existing, "PC_PATH_MAX")
    if length + 200 > path_max:  # 200: the deepest file Tune writes under it
        raise UserError(f"{where} is {length} bytes long; the files a search writes under it need about 200 more, and "
                        f"{existing}'s file system takes paths of at most {path_max}: choose a shorter results.dir")
    try:  # a real file: os.access says yes to root on a read-only folder or mount
        fd, probe = tempfile.mkstemp(prefix=".raysearch-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"results.dir: cannot write in {existing} ({e.strerror}); {where} must be a folder the "
                        "search can create or write to") from None
    if resume and not results_dir.is_dir():
        raise UserError(f"--resume: {results_dir} is not a folder")


def _ensure_demo_data(cfg: Config) -> None:
    if not cfg.data.demo_dir:
        return
    demo = Path(cfg.data.demo_dir)
    manifests = (cfg.data.new_train, *(getattr(s, split) for s in cfg.measured_sets() for split in ("dev", "test")),
                 cfg.data.replay_manifest, cfg.data.distill_manifest)
    if any(m and Path(m).is_relative_to(demo) and not Path(m).is_file() for m in manifests):
        print(f"building the demo corpus in {demo} (first use only) ...", flush=True)
        ensure_demo_corpus(demo)


def _init_ray() -> None:
    # Tune warns that a resumed trial's result.json is not on storage yet: the driver's own copy goes on.
    logging.getLogger("ray.tune.logger.logger").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    # Each report waits for the controller's poll of the workers (default every 2 s).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Tune saves the state a resume reads every 2 s at most (default: 10 s or more), so a killed
    # driver's trials go on from close to where they were.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        start_local_ray()


def start_local_ray(**kwargs) -> None:
    """A local Ray instance for a search (``kwargs``: more ``ray.init`` arguments, e.g. ``num_cpus``).

    Its worker processes, which run the trials, get the driver's priority: Ray starts them at nice 15 by
    default, so that any other process on the machine (a second job, a test suite, an editor's indexer) takes
    the cores from the trials almost entirely while the search waits on them. ``RAY_worker_niceness`` set in the
    environment is kept; a cluster started with ``ray start`` takes it from its own environment."""
    os.environ.setdefault("RAY_worker_niceness", "0")
    # The dashboard's State API is what frees the reservations of trials ASHA stops (ray#54305).
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, **kwargs)


def _study_storage(cfg: Config, results_dir: Path) -> tuple[optuna.storages.RDBStorage, str]:
    url = cfg.results.study_storage or f"sqlite:///{results_dir / OPTUNA_DB}"
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as e:  # SQLAlchemy: bad URL, unreachable server, missing driver
        raise UserError(f"results.study_storage: cannot open {url!r}: {type(e).__name__}: {e}") from None
    from sqlalchemy.engine import make_url

    return storage, make_url(url).render_as_string(hide_password=True)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resumed_config(given: Config, paths=(), overrides=()) -> Config:
    """The stored config of the search ``given`` names, with the files and overrides given to ``--resume``.

    A resumed search continues exactly as it was configured: a file or override that changes
    anything but where the search is (``search.name``, ``results.dir``) is refused with the keys.
    A folder moved or copied since the search stopped is refused, naming where it was: Ray Tune's stored
    state names that folder in absolute paths (new trials of a resumed run are still made there)."""
    config_file = results_dir_of(given) / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"--resume: {config_file.parent} holds no search (no {CONFIG_FILE}); run without --resume "
                        "to start it")
    stored = load_config([config_file])
    merged = load_config([config_file, *paths], list(overrides))
    old, new = _flat(to_dict(stored)), _flat(to_dict(merged))
    changed = [k for k in new if new[k] != old.get(k) and k not in _RESUME_LOCATORS]
    if changed:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in changed[:6])
        more = f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""
        raise UserError(f"--resume: the search in {config_file.parent} was configured differently: {shown}{more}; a "
                        "resumed search continues with its own config; drop those overrides, or start a new search "
                        "(search.name=...)")
    here, there = results_dir_of(given), results_dir_of(stored)
    if here != there:
        if _finished_summary(here) is not None:  # nothing will be resumed: run_search says so
            return dataclasses.replace(stored, results=dataclasses.replace(stored.results, dir=str(here.parent)),
                                       search=dataclasses.replace(stored.search, name=here.name))
        where = ("it is still there: resume that one" if (there / CONFIG_FILE).is_file() else
                 f"move the folder back to {there} and resume it there (results.dir={there.parent})")
        raise UserError(f"--resume: results.dir: the search in {here} was started in {there}, and Ray Tune's state "
                        f"in it names that folder; a search resumes only where it started: {where}")
    return stored


def _whole(path: Path) -> Optional[str]:
    """None when Tune's state file ``path`` is whole, else what is wrong (JSON that does not parse, a pickle
    that ends before its STOP; nothing is unpickled). Only experiment_state is JSON: the search generator's
    ``.json`` is a pickle too."""
    try:
        data = path.read_bytes()
        if path.name.startswith("experiment_state"):
            json.loads(data)
        else:
            for _ in pickletools.genops(data):
                pass
    except (OSError, ValueError) as e:
        return first_line(e)
    return None


def _recover_tune_state(experiment: Path) -> None:
    """A Ray Tune state file cut short as it was copied to the results folder (a full disk) would fail the resume
    with a traceback and start every trial again on the next try: the state goes back to its last copy found whole
    (``stored_state.LAST_GOOD``), or, without one, the search is refused with one line naming the file."""
    if not experiment.is_dir():  # remote storage (s3://...): Tune reads it itself
        return
    broken = [(p, why) for p in state_files(experiment) if (why := _whole(p)) is not None]
    if not broken:
        return
    path, why = broken[0]
    good = experiment / LAST_GOOD
    copies = state_files(good)
    if not copies or any(_whole(p) for p in copies):
        raise UserError(f"--resume: Ray Tune's saved state {path} is unreadable ({why}): it was cut short as it was "
                        "written (a full disk?) and no whole copy of it was kept; this search cannot be resumed: "
                        "start it again with another search.name (its trials so far are in trials.parquet and "
                        "epochs.parquet)")
    for stale in state_files(experiment):
        if not (good / stale.name).is_file():  # a state file of a later session: the copy is older than it
            stale.unlink()
    for copy in copies:
        atomic_write(experiment / copy.name, lambda tmp, copy=copy: shutil.copyfile(copy, tmp))
    print(f"Ray Tune's saved state {path} is unreadable ({why}; a full disk?): resuming from its last copy found "
          f"whole ({good}, saved {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(copies[0].stat().st_mtime))})",
          flush=True)


def _finished_summary(results_dir: Path) -> Optional[dict]:
    """The summary of a search that ended (not interrupted), or None."""
    try:
        summary = json.loads((results_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return None if summary.get("interrupted") else summary


def _prepare_dir(cfg: Config, resume: bool) -> Config:
    results_dir = results_dir_of(cfg)
    if resume:
        return cfg
    if results_dir.exists() and any(results_dir.iterdir()):
        raise UserError(f"{results_dir} already holds a search; pass --resume to continue it, or choose another "
                        "search.name=...")
    results_dir.mkdir(parents=True, exist_ok=True)
    # Stored with an absolute results.dir: a resume from another directory finds the same folder.
    cfg = dataclasses.replace(cfg, results=dataclasses.replace(cfg.results, dir=str(results_dir.parent)))
    atomic_write_text(results_dir / CONFIG_FILE, to_yaml(cfg))
    return cfg


def _copy_adapter(checkpoint_path: str, dest: Path) -> None:
    with ray.train.Checkpoint(checkpoint_path).as_directory() as d:
        atomic_write(dest, lambda tmp: shutil.copyfile(Path(d) / TRIAL_BEST_ADAPTER_FILE, tmp))


def _sigterm_stops_like_ctrl_c(signum, frame) -> None:
    # Tune handles SIGINT gracefully (stop the trials, save its state); SIGTERM would kill the driver.
    os.kill(os.getpid(), signal.SIGINT)


def _interrupted(trials, cfg: Config) -> bool:
    """Whether the Tune run stopped before every trial of the budget finished (Ctrl-C, SIGTERM)."""
    unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    return bool(unfinished) or len(trials) < num_trials(cfg)


def _test_evaluation(cfg: Config, model, device: torch.device, winner: Optional[dict], best_adapter: Path,
                     dev_sets: dict, results_dir: Path, base_dev: Optional[tuple] = None
                     ) -> tuple[dict, Optional[dict], Optional[int], Optional[dict], dict]:
    """(base test WERs, winner test WERs or None, the block k they were measured from or None, the bounds of the
    winner's original-domain test degradation or None, the looping hypotheses of dev and test).

    The base and the winner decode the dev and test sets of both domains once, through the winner's
    own path: the frozen-prefix cache at its lowest adapted block (unless it trained with SpecAugment)
    and the trial precision, the base with the adapters disabled; no precision offset enters the test
    degradation. Their transcripts go to ``hypotheses.parquet``; the test WERs are computed from them.
    ``base_dev``: (k, the base model's dev transcripts from block k) as the search's baseline decoded them; reused
    when the winner is measured from that k (the same path, precision and batches: the same transcripts)."""
    measured = {s.name: s for s in cfg.measured_sets()}
    test_sets = {name: load_feature_set(cfg.data, model, s.test, progress=True) for name, s in measured.items()}
    handle, k = None, None
    if winner is not None:
        handle, _, _ = load_adapter(best_adapter, model)
        model.to(device)
        k = measurement_block(handle, cfg.train.prefix_cache, bool(winner["specaugment"]))
    sets = {**{(d, "dev"): (measured[d].dev, s) for d, s in dev_sets.items()},
            **{(d, "test"): (measured[d].test, s) for d, s in test_sets.items()}}
    known = base_dev[1] if base_dev is not None and base_dev[0] == k else None
    rows = decode_sets(model, handle, k, sets, cfg.data.cache_dir, cfg.data.max_batch_seconds, device,
                       cfg.train.precision, dataset_options(cfg.data), known_base=known)
    if handle is not None:
        handle.remove()
    write_table(results_dir / HYPOTHESES_FILE, rows, HYPOTHESES_SCHEMA,
                {"search_id": cfg.search.name, "winner_trial_id": winner["trial_id"] if winner else "",
                 "measured_from_block": "" if k is None else str(k), "precision": cfg.train.precision})
    wers = set_wers(rows)
    loops = loop_counts(rows)
    if winner is None:
        return wers["base"]["test"], None, k, None, loops
    bounds = {}
    for i, p in enumerate(cfg.protected_sets()):  # the first set's seed as before sets had names
        test = [r for r in rows if (r["domain"], r["split"]) == (p.name, "test")]
        low, high = degradation_bounds([r["winner_errors"] for r in test], [r["base_errors"] for r in test],
                                       [r["reference_words"] for r in test], p.kappa_mode, cfg.search.confidence,
                                       seed=[cfg.search.seed, 0] + ([i] if i else []))
        bounds[p.name] = {"lower": low, "upper": high}
    return wers["base"]["test"], wers["winner"]["test"], k, bounds, loops


def dev_resolution(cfg: Config, epochs: list, utterances: Dict[str, int]) -> Optional[dict]:
    """Per protected set whose dev set is too small to tell a degradation of its limit from none: the median
    half-width of the degradation's bounds at the trials' first evaluations, and how many utterances would
    bring it within the limit (None when every set resolves its limit, or without bounds)."""
    out = {}
    for p in cfg.protected_sets():
        firsts = [s for r in epochs if r["eval_index"] == 1 for s in (r.get("sets") or [])
                  if s["set"] == p.name and s.get("degradation_upper") is not None]
        widths = sorted((s["degradation_upper"] - s["degradation_lower"]) / 2 for s in firsts)
        if not widths:
            continue
        half = widths[len(widths) // 2]
        limit = degradation_limit(p.kappa, p.kappa_mode)
        needed = utterances_to_resolve(half, limit, utterances[p.name])
        if needed is not None:
            out[p.name] = {"half_width": half, "limit": limit, "confidence": cfg.search.confidence,
                           "utterances": utterances[p.name], "needed": needed}
    return out or None


def _all_failed_reason(rows: list) -> Optional[str]:
    """When every trial failed: how many, and the most common error."""
    if not rows or any(r["status"] != "FAIL" for r in rows):
        return None
    error, n = collections.Counter(r.get("error") or "unknown error" for r in rows).most_common(1)[0]
    return f"every trial failed ({len(rows)} of {len(rows)}); the most common error ({n} trials): {error}"


def run_search(cfg: Config, resume: bool = False) -> dict:
    """Run (or resume) the search of ``cfg``; returns the summary (also written to ``summary.json``).

    ``cfg`` of a resumed search is its stored config (:func:`resumed_config`)."""
    started = time.monotonic()
    results_dir = results_dir_of(cfg)
    check_results_dir(cfg, resume)
    if resume:
        finished = _finished_summary(results_dir)
        if finished is not None:  # nothing to resume: the tables, the test evaluation and the timings stay
            print(f"the search in {results_dir} has finished; nothing to resume (start another with "
                  "search.name=...)\n\n" + format_summary(finished), flush=True)
            return finished
    _init_ray()
    check_shared_storage(cfg)  # before anything is written: a multi-node cluster needs shared folders
    _ensure_demo_data(cfg)
    model = load_base_model(cfg.model)
    preflight(cfg, model)
    storage_path = cfg.results.storage_path or str(results_dir)
    limit = degradation_limit(cfg.search.kappa, cfg.search.kappa_mode)
    device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
    num_blocks = len(model.adaptable_blocks())
    block_stacks = [list(s) for s in block_layout(model.adaptable_blocks())]
    model.to(device)

    # Every cache a trial reads is built here, once: trials only map the files. When every trial runs from
    # one block k, that includes the frozen-prefix caches at k, and the base is measured on them.
    k = shared_measurement_block(cfg, model)
    dev_sets = {s.name: load_feature_set(cfg.data, model, s.dev, progress=True) for s in cfg.measured_sets()}
    training_sets(cfg, model, base_fingerprint(model), may_be_positive(cfg, "replay"),
                  may_be_positive(cfg, "distill_weight"), progress=True, k=k)
    view = view_from(model, k)
    measured = {d: evaluate(view, inputs_from(s, model, k, cfg.data.cache_dir, progress=True),
                            max_batch_seconds=cfg.data.max_batch_seconds, device=device, precision=cfg.train.precision)
                for d, s in dev_sets.items()}
    baseline = {"dev": {d: r["wer"] for d, r in measured.items()}}
    # the base model's dev transcripts on this path: the test evaluation's, when the winner is measured from k too
    base_dev = (k, {(d, "dev"): r["hypotheses"] for d, r in measured.items()})
    limits = ", ".join(f"{set_label(p.name)} <= {degradation_limit(p.kappa, p.kappa_mode):g} "
                       f"{'WER points' if p.kappa_mode == 'absolute' else '% of the base WER'}"
                       for p in cfg.protected_sets())
    print(f"base model dev WER{'' if k is None else f' (from block {k}, on the frozen-prefix cache)'}: "
          + ", ".join(f"{set_label(name)} {w:.2f}" for name, w in baseline["dev"].items())
          + f" %; trials must keep the degradation of {limits}"
          + ("" if cfg.search.max_new_loops is None else
             f" and loop on at most {cfg.search.max_new_loops} more protected dev utterances than the base model"),
          flush=True)

    if cfg.results.study_storage and not resume:  # the default sqlite file is new with a new results folder
        study_storage, study_url = _study_storage(cfg, results_dir)
        if cfg.search.name in optuna.study.get_all_study_names(study_storage):
            raise UserError(f"results.study_storage {study_url} already has a study named {cfg.search.name!r}; "
                            "pass --resume to continue it, or choose another search.name=...")
    cfg = _prepare_dir(cfg, resume)
    study_storage, study_url = _study_storage(cfg, results_dir)
    metadata = {"kappa": str(cfg.search.kappa), "kappa_mode": cfg.search.kappa_mode,
                "feasibility": cfg.search.feasibility, "confidence": str(cfg.search.confidence),
                "max_new_loops": str(cfg.search.max_new_loops), "degradation_limit": str(limit),
                "sets": json.dumps(set_roles(cfg)), "num_blocks": str(num_blocks),
                "block_stacks": json.dumps(block_stacks)}
    recorder = TablesRecorder(str(results_dir), cfg.search.name, metadata)
    print(f"searching: {cfg.search.sampler} sampler, {num_trials(cfg)} trials; live tables in {results_dir}; "
          f"study: optuna-dashboard {study_url}", flush=True)
    # A driver killed before Tune first saved its state leaves nothing to restore: start the trials
    # afresh (the study continues; the trials it had asked are taken over by the new ones).
    restore = resume and tune.Tuner.can_restore(f"{storage_path}/{TUNE_RUN_NAME}")
    if restore:
        _recover_tune_state(Path(storage_path) / TUNE_RUN_NAME)
    trials_started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _sigterm_stops_like_ctrl_c)
    try:
        with threads_while_trials_run():
            make_tuner(cfg, storage_path, study_storage, recorder, restore).fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
    trials_ended = time.monotonic()

    trials = tune.ExperimentAnalysis(f"{storage_path}/{TUNE_RUN_NAME}").trials
    # Outcomes the run noted but had not told yet (told only once on storage): the state just read is.
    study = optuna.load_study(study_name=cfg.search.name, storage=study_storage)
    tell_finished_trials(study, trials, objective(cfg), limit, cfg.search.max_new_loops)
    for trial in trials:  # the state just saved names each trial's newest checkpoint: the others can go
        if trial.checkpoint is not None:  # (a Ray Train trial's are in its Train run's folder)
            keep_only_checkpoint(trial.checkpoint.filesystem, checkpoint_folder(trial.checkpoint.path),
                                 trial.checkpoint.path)
        else:
            keep_only_checkpoint(trial.storage.storage_filesystem, trial.storage.trial_fs_path, None)
    paths = {"results_dir": str(results_dir), "config": str(results_dir / CONFIG_FILE),
             "trials": str(results_dir / TRIALS_FILE), "epochs": str(results_dir / EPOCHS_FILE),
             "study_storage": study_url, "study_name": cfg.search.name, "tune_storage": storage_path,
             "best_adapter": None, "summary": str(results_dir / SUMMARY_FILE),
             "hypotheses": str(results_dir / HYPOTHESES_FILE)}
    if _interrupted(trials, cfg):
        # Nothing is concluded: no winner, no test evaluation; the study keeps the interrupted trials
        # RUNNING so that --resume finishes them and tells Optuna once.
        rows = read_rows(results_dir / TRIALS_FILE, TRIALS_SCHEMA) if (results_dir / TRIALS_FILE).is_file() else []
        timings = {"setup": trials_started - started, "trials": trials_ended - trials_started, "test": 0.0,
                   "total": time.monotonic() - started}
        summary = build_summary(cfg, rows, limit, {**baseline, "test": None}, None, None, None, pareto_front(rows),
                                paths, num_blocks=num_blocks, timings=timings, interrupted=True,
                                block_stacks=block_stacks)
        write_summary(results_dir / SUMMARY_FILE, summary)
        print("\n" + format_summary(summary), flush=True)
        return summary

    # Trials Tune knows are the search; rows of attempts a killed driver never saved go.
    keep_only_trials(results_dir, [t.trial_id for t in trials], metadata)
    fail_abandoned_trials(study)
    rows = read_rows(results_dir / TRIALS_FILE, TRIALS_SCHEMA)
    winner = select_winner(rows, limit, cfg.search.max_new_loops)

    # The only use of the test sets: the base model and the winner, once each.
    best_adapter = results_dir / BEST_ADAPTER_FILE
    if winner is not None:
        _copy_adapter(winner["checkpoint_path"], best_adapter)
        paths["best_adapter"] = str(best_adapter)
    baseline["test"], winner_test, test_k, test_bounds, loops = _test_evaluation(cfg, model, device, winner,
                                                                                 best_adapter, dev_sets, results_dir,
                                                                                 base_dev)
    epochs = read_rows(results_dir / EPOCHS_FILE, EPOCHS_SCHEMA) if (results_dir / EPOCHS_FILE).is_file() else []
    resolution = dev_resolution(cfg, epochs, {p.name: len(dev_sets[p.name]) for p in cfg.protected_sets()})
    ended = time.monotonic()
    timings = {"setup": trials_started - started, "trials": trials_ended - trials_started,
               "test": ended - trials_ended, "total": ended - started}
    summary = build_summary(cfg, rows, limit, baseline, winner, winner_test,
                            closest_infeasible(rows, limit, cfg.search.max_new_loops) if winner is None else None,
                            pareto_front(rows), paths,
                            num_blocks=num_blocks, timings=timings, all_failed=_all_failed_reason(rows),
                            block_stacks=block_stacks,
                            test_from_block=test_k, test_bounds=test_bounds, loops=loops,
                            dev_resolution=resolution)
    write_summary(results_dir / SUMMARY_FILE, summary)
    print("\n" + format_summary(summary), flush=True)
    return summary
