"""The dashboard and the report of a big search: view size, time until the trial table shows, report size.

    python bench/dashboard_scale.py [--trials 50000] [--dir DIR] [--curves N] [--rows K]

Writes a synthetic finished search of ``--trials`` trials into ``--dir`` (unless it holds one already):
trials.parquet, epochs.parquet (2-10 evaluations per measured trial), summary.json and a real Optuna
SQLite study, through the project's writers (``tests/dashboard/dash_helpers.py``, ``write_big_results``).
Then, against ``raysearch-adapters dashboard DIR --port 0`` started in its own process: the time until it
listens, the time from opening the page in Chromium (Playwright, as the browser tests) until the trial
table has rows and until every chart is drawn, and the size of the view the page got first (/api/view).
Last, ``write_report``: its time and the size of report.html. Run it with another checkout first on
PYTHONPATH to measure that version the same way.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "dashboard"))

from common import machine  # noqa: E402
from dash_helpers import SEARCH, write_big_results  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 900_000


def results_folder(d: Path, trials: int) -> Path:
    """``d`` holding a finished search of ``trials`` trials: built unless it is there already."""
    import pyarrow.parquet as pq

    if (d / "summary.json").is_file():
        found = pq.read_metadata(d / "trials.parquet").num_rows
        if found != trials:
            sys.exit(f"--dir {d}: holds a search of {found} trials, not {trials}; pass another --dir")
        print(f"results folder: {d} (already built: {trials:,} trials)")
        return d
    start = time.perf_counter()
    write_big_results(d, trials)
    print(f"results folder: {d} built in {time.perf_counter() - start:.0f} s")
    return d


def start_dashboard(d: Path, limits: list) -> tuple:
    """(process, url, seconds until it listened) of ``raysearch-adapters dashboard d --port 0``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "raysearch_adapters", "dashboard", str(d), "--port", "0", *limits],
                            stdout=subprocess.PIPE, text=True, cwd=d.parent)  # PYTHONPATH picks the version
    line = proc.stdout.readline()
    if " at http://" not in line:
        proc.kill()
        sys.exit(f"the dashboard did not start: {line!r}")
    return proc, line.split(" at ")[1].split("/ ")[0], time.perf_counter() - start


# The page's own clock when the trial table first has rows: Playwright's wait would only see them once the page's
# script is idle again, i.e. after the charts (the page lets the browser paint the table before drawing them).
TABLE_CLOCK = """new MutationObserver(() => {
  if (window.tableShownMs === undefined && document.querySelector("#trials tbody tr")) {
    window.tableShownMs = performance.now();
  }
}).observe(document, {subtree: true, childList: true});"""


def browser_times(url: str) -> tuple:
    """Seconds from opening the page until the trial table has rows (the page's clock, from navigation start) and
    until every chart is drawn, and the table's rows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.add_init_script(TABLE_CLOCK)
        start = time.perf_counter()
        page.goto(url + "/")
        page.wait_for_function("Number(document.body.dataset.rendered || 0) >= 1", timeout=TIMEOUT_MS)
        drawn = time.perf_counter() - start
        table = page.evaluate("window.tableShownMs") / 1000
        rows = page.locator("#trials tbody tr").count()
        browser.close()
    return table, drawn, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50_000, help="trials of the synthetic search (default: 50000)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="its results folder: reused when it holds one (default: a new temporary folder)")
    ap.add_argument("--curves", type=int, default=None, help="passed to dashboard and report (default: theirs)")
    ap.add_argument("--rows", type=int, default=None, help="passed to dashboard and report (default: theirs)")
    args = ap.parse_args()
    print(machine())
    d = results_folder(args.dir or Path(tempfile.mkdtemp()) / SEARCH, args.trials)
    given = {k: getattr(args, k) for k in ("curves", "rows") if getattr(args, k) is not None}
    limits = [a for k, v in given.items() for a in (f"--{k}", str(v))]

    proc, url, listening = start_dashboard(d, limits)
    try:
        print(f"dashboard listening after {listening:.1f} s")
        table, drawn, rows = browser_times(url)
        print(f"browser: trial table shown after {table:.1f} s ({rows:,} rows), every chart drawn after {drawn:.1f} s")
        start = time.perf_counter()
        with urllib.request.urlopen(url + "/api/view", timeout=TIMEOUT_MS / 1000) as r:
            view = r.read()
        print(f"first view: {len(view):,} bytes ({len(view) / 1e6:.1f} MB; fetched again, from the server's cache, "
              f"in {time.perf_counter() - start:.1f} s)")
    finally:
        proc.terminate()
        proc.wait(30)

    from raysearch_adapters.dashboard.report import write_report

    start = time.perf_counter()
    if given:  # (a version without these options is measured with its own defaults)
        from raysearch_adapters.dashboard.data import ViewLimits

        report = write_report(d, ViewLimits(**given))
    else:
        report = write_report(d)
    size = report.html.stat().st_size
    print(f"report: {size:,} bytes ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
