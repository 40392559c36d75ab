"""Bench 3: Ray's share of a trial: trial wall time vs time inside the training loop.

    python bench/ray_overhead.py [--trials 6] [--steps 60] [--runners ray_train auto] [key=value ...]

Runs the same demo search once per trial runner, in one process and one Ray instance: the
same random-sampler seed (so the same trials), one trial at a time, ASHA off.
``ray_train`` starts a TorchTrainer per trial (what the search issue shipped); ``auto`` trains
one-worker trials inside their reused Tune trial actor. For each: the wall time of the
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


def measure(runner: str, args, results_dir: Path) -> dict:
    """One search with ``runner``: trials-phase wall, in-loop time and overhead."""
    name = f"overhead-{runner}"
    summary = run_demo_search([
        f"search.name={name}", f"results.dir={results_dir}", "search.sampler=random", f"search.seed={args.seed}",
        f"search.num_trials={args.trials}", "search.asha.enabled=false", "resources.max_concurrent_trials=1",
        f"train.steps={args.steps}", f"train.eval_every={args.steps}", f"resources.trial_runner={runner}",
        *args.overrides])
    epochs = read_rows(results_dir / name / "epochs.parquet", EPOCHS_SCHEMA)
    inside = {}
    for e in epochs:
        inside[e["trial_id"]] = max(inside.get(e["trial_id"], 0.0), e["time_s"])
    t = summary["timings_s"]
    n = len(inside)
    return {"runner": runner, "trials": n, "trials_wall_s": t["trials"], "inside_loop_s": sum(inside.values()),
            "overhead": 1 - sum(inside.values()) / t["trials"],
            "overhead_per_trial_s": (t["trials"] - sum(inside.values())) / max(n, 1),
            "search_wall_s": t["total"], "setup_s": t["setup"], "test_s": t["test"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runners", nargs="+", default=["ray_train", "auto"], choices=["ray_train", "auto"])
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(r, args, Path(tmp)) for r in args.runners]
    print(f"\n{args.trials} trials x {args.steps} steps, one at a time\n")
    print("| trial runner | trials | trials phase wall | inside train loop | Ray overhead | overhead per trial "
          "| whole search wall |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['runner']} | {r['trials']} | {r['trials_wall_s']:.1f} s | {r['inside_loop_s']:.1f} s | "
              f"{100 * r['overhead']:.1f} % | {r['overhead_per_trial_s']:.1f} s | {r['search_wall_s']:.1f} s |")
    if len(rows) == 2:
        print(f"\ntrials phase: {rows[0]['trials_wall_s'] / rows[1]['trials_wall_s']:.2f}x faster with "
              f"{rows[1]['runner']} than {rows[0]['runner']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
