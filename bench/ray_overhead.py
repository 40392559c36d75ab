"""Bench 3: Ray's share of a trial: trial wall time vs time inside the training loop.

    python bench/ray_overhead.py [--trials 6] [--steps 60] [--modes before ray_train auto] [key=value ...]

Runs the same demo search once per mode, in one process and one Ray instance: the same
random-sampler seed (so the same trials), one trial at a time, ASHA off. Modes:
``before`` = what the search issue shipped (a TorchTrainer per trial, no frozen-prefix cache);
``ray_train`` = a TorchTrainer per trial with the prefix cache; ``auto`` = one-worker trials
inside their reused Tune trial actor, with the prefix cache (the default). For each: the wall time of the
trials phase, the summed time inside ``train_adapters`` (from ``epochs.parquet``), and
overhead = 1 - inside / wall, i.e. process start-up, model and data loading, Ray Train/Tune
scheduling and checkpointing. The whole search's wall time (setup + trials + test
evaluation) is the before/after of the demo main job at this budget. Extra ``key=value``
arguments override the demo config (e.g. ``model.checkpoint=PATH``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, run_demo_search  # noqa: E402

from raysearch_adapters.results.tables import EPOCHS_SCHEMA, read_rows  # noqa: E402


MODES = {"before": ["resources.trial_runner=ray_train", "train.prefix_cache=false"],
         "ray_train": ["resources.trial_runner=ray_train"], "auto": ["resources.trial_runner=auto"]}


def measure(mode: str, args, results_dir: Path) -> dict:
    """One search in ``mode``: trials-phase wall, in-loop time and overhead."""
    name = f"overhead-{mode}"
    summary = run_demo_search([
        f"search.name={name}", f"results.dir={results_dir}", "search.sampler=random", f"search.seed={args.seed}",
        # fixed-length trials (no budget): each trains train.steps, the figure this bench compares
        "search.budget_steps=0", "train.lr_schedule=cosine",
        f"search.num_trials={args.trials}", "search.asha.enabled=false", "resources.max_concurrent_trials=1",
        f"train.steps={args.steps}", f"train.eval_every={args.steps}", *MODES[mode], *args.overrides])
    epochs = read_rows(results_dir / name / "epochs.parquet", EPOCHS_SCHEMA)
    inside = {}
    for e in epochs:
        inside[e["trial_id"]] = max(inside.get(e["trial_id"], 0.0), e["time_s"])
    t = summary["timings_s"]
    n = len(inside)
    return {"mode": mode, "trials": n, "trials_wall_s": t["trials"], "inside_loop_s": sum(inside.values()),
            "overhead": 1 - sum(inside.values()) / t["trials"],
            "overhead_per_trial_s": (t["trials"] - sum(inside.values())) / max(n, 1),
            "search_wall_s": t["total"], "setup_s": t["setup"], "test_s": t["test"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(m, args, Path(tmp)) for m in args.modes]
    print(f"\n{args.trials} trials x {args.steps} steps, one at a time\n")
    print("| mode | trials | trials phase wall | inside train loop | Ray overhead | overhead per trial "
          "| whole search wall |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['mode']} | {r['trials']} | {r['trials_wall_s']:.1f} s | {r['inside_loop_s']:.1f} s | "
              f"{100 * r['overhead']:.1f} % | {r['overhead_per_trial_s']:.1f} s | {r['search_wall_s']:.1f} s |")
    for r in rows[1:]:
        print(f"trials phase {rows[0]['trials_wall_s'] / r['trials_wall_s']:.2f}x faster in {r['mode']} than "
              f"{rows[0]['mode']}; whole search {rows[0]['search_wall_s'] / r['search_wall_s']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
