"""``raysearch-adapters demo-data [--out DIR] [--small] [--seed N] [--jobs N] [--force]``: build the demo corpus."""

from __future__ import annotations

import argparse
import logging

from raysearch_adapters.config import DEMO_CONFIG, load_config
from raysearch_adapters.data.demo import DemoDataError, build_demo_corpus, corpus_summary


def run(args: argparse.Namespace) -> int:
    if args.jobs < 0:
        raise DemoDataError(f"--jobs {args.jobs}: expected 0 (all cores) or a positive number of processes")
    out = args.out if args.out is not None else load_config([DEMO_CONFIG]).data.demo_dir
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build_demo_corpus(out, small=args.small, seed=args.seed, jobs=args.jobs, force=args.force)
    print(f"demo corpus: {path}\n{corpus_summary(path)}")
    return 0
