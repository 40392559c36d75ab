"""``raysearch-adapters config show [CONFIG] [key=value ...]``: the merged config."""

from __future__ import annotations

import argparse

from raysearch_adapters.commands.args import load_from_args
from raysearch_adapters.config import to_yaml


def run(args: argparse.Namespace) -> int:
    print(to_yaml(load_from_args(args.config)), end="")
    return 0
