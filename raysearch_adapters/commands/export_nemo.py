"""``raysearch-adapters export-nemo RESULTS_DIR [--out FILE] [--name NAME]``: a NeMo model's winning adapter as a
NeMo adapter file (:mod:`raysearch_adapters.export.nemo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from raysearch_adapters.export.nemo import export_nemo_results


def run(args: argparse.Namespace) -> int:
    done = export_nemo_results(Path(args.results_dir), Path(args.out) if args.out else None, args.name)
    print(f"NeMo adapter {done['name']!r}: {done['out']} (LinearAdapter dim {done['dim']} in layers {done['layers']} "
          f"of {done['num_layers']}; the others add exactly 0); NeMo's encoder with it matches the adapted model "
          f"here (max difference {done['max_difference']:.2g})")
    print("load it in NeMo:\n" + done["load"])
    return 0
