"""Bench: is the search worth running? Its winner against hand-picking and random search at equal budget.

    python bench/search_value.py [--budget 8000] [--seeds 0 1 2] [--only c a b d] [--out bench/search_value.json]
                                 [--results-dir DIR] [key=value ...]

Every run is a real demo search (``raysearch-adapters search`` with overrides), each given the
same number of optimiser steps in all (``--budget``), on the demo corpus:

* (a) ``start``: the demo's hand-picked start point (dim 64, every block, post, lr 3e-3, lambda 30,
  no replay) as one trial trained with the whole budget, warm-up then cosine decay to 0 at the
  budget (what a careful person trains by hand), on both cores; its best feasible evaluation;
* (b) ``random``: random search: the budget split evenly over as many random configs as the
  search's cohort (fixed-length trials with cosine decay, no early stopping), the best on dev;
* (c) ``search``: the project's search (constrained TPE, the budget spent by halving and the
  finalists), as the README's main command runs it;
* (d) ``nemo``: NVIDIA NeMo's tutorial config (dim 32 in every block, lr 1e-3, no replay or
  distillation) trained with the whole budget, for reference.

Per variant over the seeds (``search.seed`` and ``train.seed``): median / min / max of the new-domain
test WER, the test degradation and the wall time. The target: (c) beats (a) by >= 2 WER points and
beats (b), both as medians. Run it alone on the machine: a second busy process distorts the times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, run_demo_search  # noqa: E402

from raysearch_adapters.config import DEMO_CONFIG, load_config  # noqa: E402
from raysearch_adapters.search.tuner import num_trials  # noqa: E402

START = ["search.space.dim=64", "search.space.blocks=all", "search.space.position=post", "search.space.lr=3e-3",
         "search.space.replay=0.0", "search.space.distill_weight=30.0"]
NEMO = ["search.space.dim=32", "search.space.blocks=all", "search.space.position=post", "search.space.lr=1e-3",
        "search.space.replay=0.0", "search.space.distill_weight=0.0"]
# One trial trained with the whole budget on both cores, as a person would train one config by hand.
ALONE = ["search.budget_steps=0", "search.num_trials=1", "search.start_points=[]", "train.lr_schedule=cosine",
         "search.patience=0", "search.asha.enabled=false", "resources.cpus_per_worker=2"]


def variant_overrides(variant: str, budget: int, cohort: int) -> list:
    """The overrides of one variant at ``budget`` steps (``cohort``: the search's cohort size, for random search)."""
    if variant == "start":
        return [*ALONE, *START, f"train.steps={budget}", f"train.warmup_steps={budget // 10}"]
    if variant == "nemo":
        return [*ALONE, *NEMO, f"train.steps={budget}", f"train.warmup_steps={budget // 10}"]
    if variant == "random":
        steps = budget // cohort
        return ["search.sampler=random", "search.budget_steps=0", f"search.num_trials={cohort}",
                "search.start_points=[]", "train.lr_schedule=cosine", f"train.steps={steps}",
                f"train.warmup_steps={steps // 10}", "search.patience=0", "search.asha.enabled=false"]
    if variant == "search":
        return [f"search.budget_steps={budget}"]
    raise ValueError(variant)


VARIANTS = {"a": "start", "b": "random", "c": "search", "d": "nemo"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=8000, help="optimiser steps per run, all trials together")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=sorted(VARIANTS),
                        help="variants to run, in this order for each seed")
    parser.add_argument("--out", default="bench/search_value.json", help="every run's figures (JSON)")
    parser.add_argument("--results-dir", help="keep every run's results folder here (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    cohort = num_trials(load_config([DEMO_CONFIG], [f"search.budget_steps={args.budget}", *args.overrides]))
    print(f"machine: {machine()}; budget {args.budget} steps; search cohort {cohort}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        results = args.results_dir or scratch  # each run's results folder: results_dir/value_<variant>_<seed>
        for seed in args.seeds:
            for key in args.only:
                variant = VARIANTS[key]
                name = f"value_{variant}_{seed}"
                started = time.monotonic()
                summary = run_demo_search([f"search.name={name}", f"results.dir={results}", f"search.seed={seed}",
                                           f"train.seed={seed}",
                                           *variant_overrides(variant, args.budget, cohort), *args.overrides])
                w = summary["winner"]
                run = {"variant": variant, "seed": seed, "wall_s": time.monotonic() - started,
                       "test_new": w["test"]["new"] if w else None,
                       "test_degradation": w["test_degradation"] if w else None,
                       "dev_new": w["dev"]["new"] if w else None, "dev_degradation": w["degradation"] if w else None,
                       "best_step": w["best_step"] if w else None, "hparams": w["hparams"] if w else None}
                runs.append(run)
                print(json.dumps(run), flush=True)
                # after every run: a long bench stopped part way keeps what it measured
                Path(args.out).write_text(json.dumps({"machine": machine(), "budget": args.budget, "runs": runs},
                                                     indent=1))
    print(f"\n{'variant':<10}{'new test WER med (min-max)':>30}{'test degradation med':>24}{'wall min med':>15}")
    for key in args.only:
        rs = [r for r in runs if r["variant"] == VARIANTS[key] and r["test_new"] is not None]
        if not rs:
            print(f"({key}) {VARIANTS[key]:<6}: no feasible winner")
            continue
        new = [r["test_new"] for r in rs]
        print(f"({key}) {VARIANTS[key]:<6}{statistics.median(new):>14.2f} ({min(new):.2f}-{max(new):.2f})"
              f"{statistics.median(r['test_degradation'] for r in rs):>24.2f}"
              f"{statistics.median(r['wall_s'] for r in rs) / 60:>15.1f}")


if __name__ == "__main__":
    main()
