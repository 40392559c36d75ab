"""``raysearch-adapters dashboard RESULTS_DIR [--host 127.0.0.1] [--port N]``: serve a search's live dashboard."""

from __future__ import annotations

import argparse
from pathlib import Path

from raysearch_adapters.dashboard.server import serve


def run(args: argparse.Namespace) -> int:
    serve(Path(args.results_dir), host=args.host, port=args.port)
    return 0
