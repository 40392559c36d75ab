"""``raysearch-adapters search [CONFIG] [key=value ...] [--resume]``: 0 done, 1 every trial failed,
130 interrupted (resumable)."""

from __future__ import annotations

import argparse

from raysearch_adapters.commands.args import load_from_args, split_config
from raysearch_adapters.search.run import INTERRUPTED_EXIT, resumed_config, run_search


def run(args: argparse.Namespace) -> int:
    cfg = load_from_args(args.config)
    if args.resume:
        cfg = resumed_config(cfg, *split_config(args.config))
    summary = run_search(cfg, resume=args.resume)
    if summary.get("interrupted"):
        return INTERRUPTED_EXIT
    return 1 if summary.get("all_failed") else 0
