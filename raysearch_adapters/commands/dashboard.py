"""``raysearch-adapters dashboard RESULTS_DIR [--host 127.0.0.1] [--port N] [--curves N] [--rows K]``: serve a
search's live dashboard."""

from __future__ import annotations

import argparse
from pathlib import Path

from raysearch_adapters.dashboard.data import ViewLimits
from raysearch_adapters.dashboard.server import serve


def run(args: argparse.Namespace) -> int:
    serve(Path(args.results_dir), host=args.host, port=args.port, limits=ViewLimits(curves=args.curves, rows=args.rows))
    return 0
