"""Bench 1: search efficiency on the demo: constrained TPE vs random search vs the NeMo-style grid.

    python bench/search_efficiency.py [--budget 24] [--seeds 0 1 2] [--grid-seeds 0] [key=value ...]

Every run is a real demo search (``raysearch-adapters search`` with overrides) in one Ray
instance. TPE and random search the demo space (dim, blocks, position, lr) with ``--budget``
trials per seed; the grid sweeps lr x dim x stochastic depth (adapters everywhere, as NeMo's
tutorial) with all of its configs (its best does not depend on the seed; other seeds only
reorder it). From each run's ``trials.parquet`` in trial order: the best feasible dev WER
after n trials (the winner the search would pick had it stopped there), and the winner's
test WERs from ``summary.json``. The targets: TPE reaches the grid's best feasible dev WER
within a third of the grid's trials, and beats random search's median at equal budget.
Extra ``key=value`` arguments override the demo config for every run (e.g. ``train.steps=60``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, run_demo_search  # noqa: E402

from raysearch_adapters.config import DEMO_CONFIG, load_config  # noqa: E402
from raysearch_adapters.results.select import select_winner  # noqa: E402
from raysearch_adapters.results.tables import TRIALS_SCHEMA, read_rows  # noqa: E402


def _order(trial_id: str):
    # Tune numbers its trials: "<experiment>_<counter>"
    tail = trial_id.rsplit("_", 1)[-1]
    return (0, int(tail)) if tail.isdigit() else (1, trial_id)


def best_so_far(rows: list, limit: float) -> list:
    """Best feasible dev new-domain WER after each trial (None until one is feasible)."""
    rows = sorted(rows, key=lambda r: _order(r["trial_id"]))
    curve = []
    for n in range(1, len(rows) + 1):
        w = select_winner(rows[:n], limit)
        curve.append(None if w is None else w["dev_wer_new"])
    return curve


def run(sampler: str, seed: int, budget: int, overrides: list, results_dir: Path) -> dict:
    name = f"eff-{sampler}-{seed}"
    summary = run_demo_search([f"search.name={name}", f"results.dir={results_dir}", f"search.sampler={sampler}",
                               # fixed-length trials, as measured: the trial count is the budget here
                               "search.budget_steps=0", "train.lr_schedule=cosine", "train.warmup_steps=80",
                               f"search.seed={seed}", f"search.num_trials={budget}", *overrides])
    rows = read_rows(results_dir / name / "trials.parquet", TRIALS_SCHEMA)
    w = summary["winner"]
    return {"sampler": sampler, "seed": seed, "curve": best_so_far(rows, summary["degradation_limit"]),
            "winner_dev_new": w["dev"]["new"] if w else None, "winner_test": w["test"] if w else None,
            "baseline": summary["baseline"], "trials_s": summary["timings_s"]["trials"]}


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def report(runs: list, budget: int) -> str:
    grid = [r for r in runs if r["sampler"] == "grid"]
    grid_best = min((r["curve"][-1] for r in grid if r["curve"] and r["curve"][-1] is not None), default=None)
    grid_trials = len(grid[0]["curve"]) if grid else budget
    lines = [f"grid: {grid_trials} configs, best feasible dev WER new {_fmt(grid_best)}", ""]
    checkpoints = sorted({n for n in (2, 4, 6, 8, 12, 16, 24, 32, budget, grid_trials) if n <= max(budget, grid_trials)})
    lines.append("| sampler | runs | " + " | ".join(f"best after {n}" for n in checkpoints)
                 + " | winner test new / orig (median) | trials phase (median) |")
    lines.append("| --- | --- | " + " | ".join("---" for _ in checkpoints) + " | --- | --- |")
    for sampler in ("tpe", "random", "grid"):
        rs = [r for r in runs if r["sampler"] == sampler]
        if not rs:
            continue
        cells = [_fmt(_median([r["curve"][n - 1] if n <= len(r["curve"]) else None for r in rs])) for n in checkpoints]
        tests = [r["winner_test"] for r in rs if r["winner_test"]]
        test = (f"{_fmt(_median([t['new'] for t in tests]))} / {_fmt(_median([t['original'] for t in tests]))}"
                if tests else "-")
        lines.append(f"| {sampler} | {len(rs)} | " + " | ".join(cells)
                     + f" | {test} | {_median([r['trials_s'] for r in rs]):.0f} s |")
    if grid_best is not None:
        reach = []
        for r in (r for r in runs if r["sampler"] == "tpe"):
            hit = next((i + 1 for i, v in enumerate(r["curve"]) if v is not None and v <= grid_best), None)
            reach.append(hit)
        lines += ["", f"TPE trials to reach the grid's best ({_fmt(grid_best)}): {reach} per seed "
                      f"(target: <= {grid_trials / 3:.0f}, a third of the grid)"]
    tpe = _median([r["curve"][-1] for r in runs if r["sampler"] == "tpe"])
    rnd = _median([r["curve"][-1] for r in runs if r["sampler"] == "random"])
    lines.append(f"median best feasible dev WER at {budget} trials: TPE {_fmt(tpe)}, random {_fmt(rnd)} "
                 "(target: TPE lower)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=0, help="trials per TPE/random run (default: the grid's size)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grid-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--samplers", nargs="+", default=["grid", "tpe", "random"])
    parser.add_argument("--out", help="also write every run's curve as JSON here")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    args = parser.parse_args()
    budget = args.budget or load_config([DEMO_CONFIG], ["search.budget_steps=0", "search.num_trials=1",
                                             "train.lr_schedule=cosine", *args.overrides]).search.grid.size()
    print(f"machine: {machine()}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in args.samplers:
            for seed in (args.grid_seeds if sampler == "grid" else args.seeds):
                runs.append(run(sampler, seed, budget, args.overrides, Path(tmp)))
                print(json.dumps(runs[-1]), flush=True)
    print("\n" + report(runs, budget))
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine(), "budget": budget, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
