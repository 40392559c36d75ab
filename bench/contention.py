"""Bench: a search's wall time on a busy machine against an idle one (thread over-subscription).

    python bench/contention.py [--cli PATH] [--competitor torch|spin] [--out DIR] [key=value ...]

Runs the same demo search twice, each in its own ``raysearch-adapters search`` process (its own
Ray instance): once on the idle machine, once while a competing process computes beside it, and
prints the wall times (setup, trials, test evaluation, in all) and the ratio busy / idle. The
competitor is another PyTorch job (``torch``: matrix products with torch's default threads, one per
core, what a second training run or a test suite does) or a pure-Python loop on one core (``spin``).

``--cli`` runs another checkout's command (e.g. ``/path/to/old/.venv/bin/raysearch-adapters``) so
that one script measures the code before and after a change on the same machine. Extra
``key=value`` arguments override the workload (by default 4 fixed-length trials, 2 at a time on
one CPU each).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

WORKLOAD = ["search.budget_steps=0", "search.num_trials=4", "search.start_points=[]", "search.sampler=random",
            "search.seed=7", "train.steps=150", "train.eval_every=150", "search.asha.enabled=false",
            "resources.max_concurrent_trials=2", "resources.cpus_per_worker=1"]

COMPETITORS = {
    "torch": "import torch\na = torch.randn(384, 384)\nwhile True:\n    a = (a @ a).tanh()\n",
    "spin": "x = 0\nwhile True:\n    x = (x + 1) % 1000003\n",
}


def run_search(cli: str, overrides: list, log: Path) -> dict:
    """One search; its summary's timings (seconds) and the winner's test figures."""
    start = time.monotonic()
    with open(log, "w") as f:
        subprocess.run([cli, "search", *overrides], stdout=f, stderr=subprocess.STDOUT, check=True)
    wall = time.monotonic() - start
    results = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("results.dir=")))
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("search.name="))
    summary = json.loads((results / name / "summary.json").read_text())
    return {"wall_s": wall, **{k: summary["timings_s"][k] for k in ("setup", "trials", "test")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cli", default=shutil.which("raysearch-adapters") or "raysearch-adapters",
                        help="the raysearch-adapters command to measure (default: this environment's)")
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="torch")
    parser.add_argument("--out", default=None, help="folder for the searches' results and logs (default: a temp one)")
    args, overrides = parser.parse_known_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="contention-"))
    out.mkdir(parents=True, exist_ok=True)
    print(machine(), flush=True)
    print(f"command: {args.cli}; competitor: {args.competitor}; results and logs in {out}", flush=True)
    figures = {}
    for mode in ("idle", "busy"):
        workload = [*WORKLOAD, *overrides, f"results.dir={out}", f"search.name=contention-{mode}"]
        competitor = None
        if mode == "busy":
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITORS[args.competitor]],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            figures[mode] = run_search(args.cli, workload, out / f"{mode}.log")
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
        f = figures[mode]
        print(f"{mode}: {f['wall_s']:.0f} s in all (setup {f['setup']:.0f}, trials {f['trials']:.0f}, "
              f"test {f['test']:.0f})", flush=True)
    idle, busy = figures["idle"], figures["busy"]
    print(f"busy / idle: {busy['wall_s'] / idle['wall_s']:.2f} in all, {busy['trials'] / idle['trials']:.2f} "
          f"for the trials", flush=True)
    (out / "contention.json").write_text(json.dumps({"cli": args.cli, "competitor": args.competitor,
                                                     "machine": machine(), **figures}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
