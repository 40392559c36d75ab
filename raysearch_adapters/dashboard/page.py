"""The dashboard page and its data: one JSON view of a results folder, one HTML page for the live
server (assets linked, polls the view) and for the report (assets and view inlined)."""

from __future__ import annotations

import datetime
import importlib.util
import json
from pathlib import Path
from typing import Callable, Optional

from raysearch_adapters.dashboard.charts import all_charts
from raysearch_adapters.dashboard.data import (DOWNLOADS, OPTUNA_DB, ResultFileError, Snapshot, ViewLimits,
                                               fingerprint, read_snapshot, result_file, summary_view, trials_view)
from raysearch_adapters.dashboard.fixed_broken import fixed_broken_view
from raysearch_adapters.dashboard.importance import Importances, param_importances

STATIC_DIR = Path(__file__).parent / "static"
# The page's own assets, by the name the page asks for: nothing else is ever served from disk.
STATIC_TYPES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css", "plotly.min.js": "text/javascript"}
POLL_SECONDS = 3


def plotly_js() -> Path:
    """The plotly.min.js bundled in the installed ``plotly`` Python package (no CDN: works offline)."""
    spec = importlib.util.find_spec("plotly")  # locates the package without importing it
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed plotly package; reinstall plotly")
    return path


def static_path(name: str) -> Optional[Path]:
    """The file of a page asset, or None for any name that is not one of :data:`STATIC_TYPES`."""
    if name not in STATIC_TYPES:
        return None
    return plotly_js() if name == "plotly.min.js" else STATIC_DIR / name


def study_importances(results_dir: Path, snap: Snapshot) -> Importances:
    """The parameter importances of the search's Optuna study (``optuna.db``), or why there are none."""
    if snap.state not in ("running", "finished"):
        return Importances(message="no trials yet")
    try:
        db = result_file(results_dir, OPTUNA_DB)
        for sidecar in ("-journal", "-wal", "-shm"):  # SQLite opens these beside the study file too
            result_file(results_dir, OPTUNA_DB + sidecar)
        return param_importances(db or results_dir / OPTUNA_DB, snap.search_id)
    except ResultFileError as e:
        return Importances(message=str(e))


def build_view(results_dir: Path, top_utterances: Optional[int] = None, limits: ViewLimits = ViewLimits(),
               importances: Callable[[Path, Snapshot], Importances] = study_importances) -> dict:
    """Everything the page shows, as JSON-able data (the API's answer, the report's embedded data);
    ``top_utterances``: the "Fixed and broken" view keeps only that many most fixed and most broken
    utterances per set (the report); ``limits``: how many learning curves and table rows it carries;
    ``importances``: what gives the study's importances (the server: a worker thread)."""
    results_dir = Path(results_dir)
    stamp = fingerprint(results_dir)
    snap = read_snapshot(results_dir, limits.curves)
    imp = importances(results_dir, snap)
    fixed_broken = fixed_broken_view(results_dir, snap.errors, top_utterances)
    files = []
    for name in DOWNLOADS:
        try:
            if result_file(results_dir, name) is not None:
                files.append(name)
        except ResultFileError as e:
            if str(e) not in snap.errors:
                snap.errors.append(str(e))
    return {
        "fingerprint": stamp,
        "generated_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "results_dir": str(results_dir), "state": snap.state, "search_id": snap.search_id,
        "errors": snap.errors, "notes": snap.notes, "summary": summary_view(snap),
        "trials": trials_view(snap, limits.rows), "charts": all_charts(snap, imp, limits), "fixed_broken": fixed_broken,
        "files": files,
    }


def _inline_json(view: dict) -> str:
    # "</script" or "<!--" inside a <script> block would end or derail it: write every "<" as \u003c.
    return json.dumps(view, allow_nan=False).replace("<", "\\u003c")


def render_page(view: Optional[dict] = None) -> str:
    """The HTML page: live (``view`` None: assets from /static, data polled from /api/view) or
    self-contained (``view`` given: CSS, Plotly.js, the script and the data inlined)."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    if view is None:
        head = '<link rel="stylesheet" href="static/dashboard.css">'
        scripts = ('<script src="static/plotly.min.js"></script>\n'
                   f'<script src="static/dashboard.js" data-poll-seconds="{POLL_SECONDS}"></script>')
        title = "raysearch-adapters dashboard"
    else:
        head = f"<style>\n{(STATIC_DIR / 'dashboard.css').read_text(encoding='utf-8')}\n</style>"
        scripts = (f"<script>\n{plotly_js().read_text(encoding='utf-8')}\n</script>\n"
                   f'<script type="application/json" id="rsa-view">{_inline_json(view)}</script>\n'
                   f"<script>\n{(STATIC_DIR / 'dashboard.js').read_text(encoding='utf-8')}\n</script>")
        title = f"raysearch-adapters report: {view.get('search_id') or view['results_dir']}"
    return (html.replace("<!--TITLE-->", title.replace("&", "&amp;").replace("<", "&lt;"))
            .replace("<!--HEAD-->", head).replace("<!--SCRIPTS-->", scripts))
