"""``raysearch-adapters report``: one self-contained HTML file (Plotly.js and the data inlined, opens
offline, shareable by mail) and a PNG per chart, written into the results folder. Of the "Fixed and
broken" view it keeps the substitution tables and the most fixed and most broken utterances of each
set (all of them would make a large file; the dashboard shows every one, with its audio)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

from raysearch_adapters.dashboard.data import ViewLimits
from raysearch_adapters.dashboard.page import build_view, render_page
from raysearch_adapters.dashboard.png import write_png
from raysearch_adapters.errors import UserError
from raysearch_adapters.fileio import atomic_write_text

REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
REPORT_UTTERANCES = 5  # the most fixed and the most broken utterances of each set the report keeps


@dataclass
class Report:
    """Where the report went; the unreadable files and the missing parts it mentions."""

    html: Path
    pngs: List[Path]
    errors: List[str]
    notes: List[str]


def write_report(results_dir: Path, limits: ViewLimits = ViewLimits()) -> Report:
    """Write ``report.html`` and ``plots/<chart>.png`` into ``results_dir`` (``limits``: the learning curves and
    table rows it keeps)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"RESULTS_DIR {results_dir}: not a folder; pass a search's results folder "
                        "(results/<search name>/)")
    view = build_view(results_dir, top_utterances=REPORT_UTTERANCES, limits=limits)
    if view["state"] in ("empty", "error"):
        raise UserError(f"RESULTS_DIR {results_dir}: nothing to report: " + " | ".join(view["errors"] + view["notes"]))
    html = results_dir / REPORT_FILE
    pngs = [results_dir / PLOTS_DIR / f"{key}.png" for key, fig in view["charts"].items() if "data" in fig]
    try:
        atomic_write_text(html, render_page(view))
        for png in pngs:
            write_png(view["charts"][png.stem], png)
    except OSError as e:  # a read-only folder, a full disk, a file where plots/ should be
        raise UserError(f"RESULTS_DIR {results_dir}: cannot write the report ({e})") from None
    return Report(html=html, pngs=pngs, errors=view["errors"], notes=view["notes"])
