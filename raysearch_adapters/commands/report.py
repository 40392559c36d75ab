"""``raysearch-adapters report RESULTS_DIR [--curves N] [--rows K]``: a self-contained HTML report of a search, and its plots as PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from raysearch_adapters.dashboard.data import ViewLimits
from raysearch_adapters.dashboard.report import PLOTS_DIR, write_report


def run(args: argparse.Namespace) -> int:
    report = write_report(Path(args.results_dir), ViewLimits(curves=args.curves, rows=args.rows))
    for m in report.errors:
        print(f"warning: {m}")
    for m in report.notes:
        print(f"note: {m}")
    print(f"report: {report.html.absolute()} (self-contained, opens offline)")
    print(f"plots:  {len(report.pngs)} PNG files in {(report.html.parent / PLOTS_DIR).absolute()}")
    return 0
