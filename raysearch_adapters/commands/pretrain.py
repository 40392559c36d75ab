"""``raysearch-adapters pretrain [CONFIG] [key=value ...] [--resume]``: train a base Conformer-CTC on the
original domain."""

from __future__ import annotations

import argparse
import logging
import shlex

from raysearch_adapters.commands.args import load_from_args
from raysearch_adapters.train.pretrain import pretrain


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_from_args(args.config)
    command = "raysearch-adapters pretrain " + " ".join(shlex.quote(a) for a in args.config)
    path = pretrain(cfg, resume=args.resume, command=command.strip())
    print(f"model: {path}\nmodel card: {path.parent / 'MODEL_CARD.md'}")
    print(f"use it: raysearch-adapters search model.checkpoint={path}")
    return 0
