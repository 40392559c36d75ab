"""A results folder as a search writes it: tables via write_table, summary.json via build_summary, a
real Optuna SQLite study; and the dashboard app served on 127.0.0.1 in a background thread."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import threading
import time
from pathlib import Path

from raysearch_adapters.hparams import NAMES as HPARAM_NAMES

SEARCH = "fixture"
NUM_BLOCKS = 4
LIMIT = 1.0
BASELINE = {"dev": {"new": 45.0, "original": 10.0}, "test": {"new": 47.0, "original": 10.4}}
WINNER_TEST = {"new": 19.5, "original": 10.9}
METADATA = {"kappa": "1.0", "kappa_mode": "absolute", "degradation_limit": "1.0", "num_blocks": str(NUM_BLOCKS)}

# trial id, dim, blocks, position, lr, status, dev WER new, degradation (None: never evaluated)
TRIALS = [
    ("t1", 8, "top:2", "post", 1e-3, "COMPLETE", 20.0, 0.5),
    ("t2", 32, "all", "post", 3e-3, "COMPLETE", 15.0, 2.0),
    ("t3", 16, "bottom:2", "mha", 5e-4, "COMPLETE", 24.0, 0.2),
    ("t4", 64, "every:2", "ffn", 2e-3, "PRUNED", 30.0, 0.0),
    ("t5", 4, "1,3", "post", 1e-4, "PRUNED", 35.0, 0.1),
    ("t6", 16, "window:1-3", "ffn", 1e-3, "COMPLETE", 18.0, 0.9),
    ("t7", 32, "top:1", "mha", 5e-3, "FAIL", None, None),
    ("t8", 8, "all", "post", 2e-3, "RUNNING", 40.0, 0.3),
]
WINNER = "t6"  # feasible (degradation <= 1.0) with the lowest dev WER new
PARETO = ["t2", "t6", "t1", "t3", "t4"]  # t5 is dominated by t4


def trial_rows() -> list:
    """trials.parquet rows of :data:`TRIALS`."""
    rows = []
    for tid, dim, blocks, position, lr, status, wer, deg in TRIALS:
        measured = wer is not None
        rows.append({
            # every hyperparameter column (null: not this trial's), then what these trials set
            **{name: None for name in HPARAM_NAMES},
            "search_id": SEARCH, "trial_id": tid, "type": "bottleneck", "dim": dim, "rank": None, "alpha": None,
            "targets": None, "blocks": blocks, "position": position, "lr": lr,
            "dropout": 0.1, "stochastic_depth": 0.0, "l2_lambda": 0.0, "weight_decay": 0.0, "steps": 30,
            "specaugment": True, "replay": 0.25, "distill_weight": 10.0 if dim > 8 else 0.0,
            "adapter_params": dim * 2 * 144 * 2, "adapter_percent": dim * 0.05,
            "status": status, "evals": 3 if status == "COMPLETE" else 1 if measured else 0,
            "step": 30 if measured else None, "best_step": 30 if measured else None, "dev_wer_new": wer,
            "base_dev_wer_original": BASELINE["dev"]["original"] if measured else None,
            "dev_wer_original": BASELINE["dev"]["original"] + deg if measured else None, "degradation": deg,
            "feasible": deg <= LIMIT if measured else None, "wall_time_s": 12.5 if measured else 1.0,
            "device": "cpu", "node_id": "n0", "checkpoint_path": f"/tmp/ckpt/{tid}" if measured else None,
            "error": "RuntimeError: out of memory" if status == "FAIL" else None})
    return rows


def epoch_rows() -> list:
    """epochs.parquet rows: evaluations converging on each trial's last values."""
    rows = []
    for tid, _, _, _, lr, status, wer, deg in TRIALS:
        if wer is None:
            continue
        n = 3 if status == "COMPLETE" else 1
        for i in range(1, n + 1):
            back = n - i  # evaluations before the last: worse WER, less degradation
            rows.append({"search_id": SEARCH, "trial_id": tid, "step": 10 * i, "eval_index": i,
                         "train_loss": 2.0 / i, "dev_wer_new": wer + 5.0 * back,
                         "dev_wer_original": BASELINE["dev"]["original"] + deg - 0.1 * back,
                         "degradation": deg - 0.1 * back, "lr": lr, "time_s": 4.0 * i})
    return rows


def write_study(path: Path) -> None:
    """A real Optuna study of the measured trials (objective: dev WER new; ASHA's stops PRUNED)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=SEARCH, storage=f"sqlite:///{path}", direction="minimize")
    dists = {"dim": optuna.distributions.IntDistribution(4, 64, log=True),
             "blocks": optuna.distributions.CategoricalDistribution(sorted({t[2] for t in TRIALS})),
             "position": optuna.distributions.CategoricalDistribution(["post", "mha", "ffn"]),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    states = {"COMPLETE": optuna.trial.TrialState.COMPLETE, "PRUNED": optuna.trial.TrialState.PRUNED,
              "FAIL": optuna.trial.TrialState.FAIL}
    for tid, dim, blocks, position, lr, status, wer, _ in TRIALS:
        if status in states:
            study.add_trial(optuna.trial.create_trial(
                params={"dim": dim, "blocks": blocks, "position": position, "lr": lr}, distributions=dists,
                value=wer if status == "COMPLETE" else None, state=states[status],
                user_attrs={"tune_trial_id": tid}))


def write_results(d: Path, summary: bool = True) -> Path:
    """A results folder: tables, study and (with ``summary``) summary.json as the search writes them."""
    from raysearch_adapters.results import EPOCHS_SCHEMA, TRIALS_SCHEMA, write_table

    d.mkdir(parents=True, exist_ok=True)
    rows = trial_rows()
    write_table(d / "trials.parquet", rows, TRIALS_SCHEMA, METADATA)
    write_table(d / "epochs.parquet", epoch_rows(), EPOCHS_SCHEMA, METADATA)
    write_study(d / "optuna.db")
    if summary:
        _write_summary(d, [r for r in rows if r["status"] != "RUNNING"])
    return d


def _write_summary(d: Path, done: list) -> None:
    """summary.json (and the winner's adapter file) of a search that ended with the trials ``done``."""
    from raysearch_adapters.config import load_config
    from raysearch_adapters.results.select import pareto_front, select_winner
    from raysearch_adapters.search.summary import build_summary, write_summary

    cfg = load_config([], [f"search.name={SEARCH}", f"search.kappa={LIMIT}"])
    paths = {"results_dir": str(d), "config": str(d / "config.yaml"), "trials": str(d / "trials.parquet"),
             "epochs": str(d / "epochs.parquet"), "study_storage": f"sqlite:///{d / 'optuna.db'}",
             "study_name": SEARCH, "tune_storage": str(d), "best_adapter": str(d / "best_adapter.pt"),
             "summary": str(d / "summary.json")}
    (d / "best_adapter.pt").write_bytes(b"adapter weights")
    write_summary(d / "summary.json", build_summary(cfg, done, LIMIT, BASELINE, select_winner(done, LIMIT),
                                                    WINNER_TEST, None, pareto_front(done), paths,
                                                    num_blocks=NUM_BLOCKS))


class Served:
    """The real dashboard app on ``host`` (127.0.0.1; a free port), set up and run in a background thread
    with its own event loop (the test's thread may run one already: Playwright's sync API does)."""

    def __init__(self, results_dir: Path, host: str = "127.0.0.1"):
        from aiohttp import web

        from raysearch_adapters.dashboard.server import make_app

        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(make_app(results_dir, host))
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, host, 0).start())
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(60), "the dashboard did not start"
        self.host, self.port = self.runner.addresses[0][:2]
        self.url = f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def get(served, path: str, method: str = "GET", host: str | None = None):
    """(status, headers, body) of a raw request: the path goes out exactly as written (no client normalising);
    ``host``: the Host header instead of the one naming the server ("" sends none)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True, skip_host=host is not None)
        if host:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


# A big finished search, as ASHA leaves it: most trials stopped at a rung, a few trained to the end, some failed.
BIG_STATUSES = (("PRUNED", 0.80), ("COMPLETE", 0.17), ("FAIL", 0.03))
BIG_SPACE = {"dim": [32, 64, 128], "blocks": ["all", "every:2", "bottom:3", "top:2"], "position": ["post", "ffn"]}


def _big_sets(wer: float, deg: float, lower: float, upper: float) -> list:
    original = BASELINE["dev"]["original"]
    return [{"set": "new", "role": "target", "dev_wer": wer},
            {"set": "original", "role": "protected", "dev_wer": original + deg, "base_dev_wer": original,
             "degradation": deg, "degradation_lower": lower, "degradation_upper": upper, "held_degradation": deg,
             "limit": LIMIT, "new_loops": 0, "feasible": deg <= LIMIT}]


def write_big_results(d: Path, trials: int, seed: int = 0, study: bool = True) -> Path:
    """A finished search of ``trials`` trials (ids ``ab12c_00001`` ..., as Tune names them): trials.parquet, an
    epochs.parquet of 2-10 evaluations per measured trial, summary.json and (``study``) a real Optuna study of
    the same trials, all written by the project's writers."""
    import random

    from raysearch_adapters.results import EPOCHS_SCHEMA, TRIALS_SCHEMA, write_table

    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    rows, epochs = [], []
    for n in range(1, trials + 1):
        tid = f"ab12c_{n:05d}"
        status = rng.choices([s for s, _ in BIG_STATUSES], [w for _, w in BIG_STATUSES])[0]
        hp = {**{name: None for name in HPARAM_NAMES}, "type": "bottleneck",
              **{k: rng.choice(v) for k, v in BIG_SPACE.items()}, "lr": math.exp(rng.uniform(math.log(1.5e-3),
                                                                                          math.log(8e-3))),
              "replay": rng.uniform(0.0, 0.5), "distill_weight": math.exp(rng.uniform(math.log(5), math.log(100))),
              "dropout": 0.0, "stochastic_depth": 0.0, "l2_lambda": 0.0, "weight_decay": 0.0, "steps": 400,
              "warmup_steps": 20, "specaugment": True}
        evals = 0 if status == "FAIL" else 10 if status == "COMPLETE" else rng.randint(2, 9)
        final_wer, final_deg = rng.uniform(14.0, 40.0), rng.uniform(-0.5, 3.0)
        best = None
        for i in range(1, evals + 1):
            back = evals - i  # evaluations before the last: worse WER, less degradation
            wer, deg = final_wer + 1.5 * back + rng.uniform(0, 0.5), final_deg - 0.15 * back
            lower, upper = deg - rng.uniform(0.2, 0.6), deg + rng.uniform(0.2, 0.6)
            e = {"search_id": SEARCH, "trial_id": tid, "step": 40 * i, "eval_index": i,
                 "train_loss": 2.0 / i, "supervised_loss": 1.8 / i, "distill_loss": 0.05,
                 "dev_wer_new": wer, "dev_wer_original": BASELINE["dev"]["original"] + deg, "degradation": deg,
                 "degradation_lower": lower, "degradation_upper": upper, "held_degradation": deg, "new_loops": 0,
                 "feasible": deg <= LIMIT, "binding_set": "original", "sets": _big_sets(wer, deg, lower, upper),
                 "lr": hp["lr"], "time_s": 30.0 * i}
            epochs.append(e)
            # the trial's result: its feasible evaluation with the lowest WER, else the least infeasible
            if best is None or (e["feasible"], -e["dev_wer_new"], -e["degradation"]) > (
                    best["feasible"], -best["dev_wer_new"], -best["degradation"]):
                best = e
        row = {**hp, "search_id": SEARCH, "trial_id": tid, "trial_number": n, "status": status, "evals": evals,
               "step": 40 * evals if evals else None,
               "adapter_params": hp["dim"] * 2 * 144 * 6, "adapter_percent": hp["dim"] * 0.02,
               "wall_time_s": 30.0 * evals + 5.0, "device": "cpu", "node_id": "n0",
               "error": "RuntimeError: CUDA out of memory" if status == "FAIL" else None}
        if best is not None:
            row.update({k: best[k] for k in ("dev_wer_new", "dev_wer_original", "degradation", "degradation_lower",
                                             "degradation_upper", "held_degradation", "new_loops", "feasible",
                                             "binding_set", "sets")},
                       best_step=best["step"], base_dev_wer_original=BASELINE["dev"]["original"],
                       checkpoint_path=f"/results/{SEARCH}/tune/{tid}/checkpoint_{evals:06d}")
        rows.append(row)
    write_table(d / "trials.parquet", rows, TRIALS_SCHEMA, METADATA)
    write_table(d / "epochs.parquet", epochs, EPOCHS_SCHEMA, METADATA)
    if study:
        _write_big_study(d / "optuna.db", rows)
    _write_summary(d, rows)
    return d


def _write_big_study(path: Path, rows: list) -> None:
    """The Optuna study the search would have kept of ``rows``: the searched parameters, the objective of a
    COMPLETE trial, the last reported value of a PRUNED one, the degradation constraint, Tune's trial id."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {**{k: optuna.distributions.CategoricalDistribution(v) for k, v in BIG_SPACE.items()},
             "lr": optuna.distributions.FloatDistribution(1.5e-3, 8e-3, log=True),
             "replay": optuna.distributions.FloatDistribution(0.0, 0.5),
             "distill_weight": optuna.distributions.FloatDistribution(5.0, 100.0, log=True)}
    states = {"COMPLETE": optuna.trial.TrialState.COMPLETE, "PRUNED": optuna.trial.TrialState.PRUNED,
              "FAIL": optuna.trial.TrialState.FAIL}
    study = optuna.create_study(study_name=SEARCH, storage=f"sqlite:///{path}", direction="minimize")
    study.add_trials([optuna.trial.create_trial(
        params={k: r[k] for k in dists}, distributions=dists, state=states[r["status"]],
        value=r["dev_wer_new"] if r["status"] == "COMPLETE" else None,
        intermediate_values={r["evals"]: r["dev_wer_new"]} if r["status"] == "PRUNED" else None,
        system_attrs={"constraints": [r["held_degradation"] - LIMIT]} if r["status"] != "FAIL" else None,
        user_attrs={"tune_trial_id": r["trial_id"]}) for r in rows])


def settled_view(served) -> dict:
    """The served view once its importances (computed by a worker thread) are in."""
    for _ in range(1200):
        view = json.loads(get(served, "/api/view")[2])
        if not view["fingerprint"].endswith("|importances-pending"):
            return view
        time.sleep(0.1)
    raise AssertionError("the importances never came")
