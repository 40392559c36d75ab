"""``raysearch-adapters export RESULTS_DIR [--out DIR]``: a search's LoRA winner merged into the base model
and checked on the dev sets (:mod:`raysearch_adapters.export.merged`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from raysearch_adapters.export.merged import export


def format_export(record: dict) -> str:
    """What ``export`` prints: what was written, and for a merge the difference per precision and dev set."""
    if not record["merged"]:
        return (f"{record['reason']}.\nwrote the adapter-only file instead: {record['files']['adapter']}\n"
                f"load it: {record['load']}\nexport record: {record['files']['export_json']}")
    lines = [f"merged the lora winner (trial {record['winner_trial_id']}) into the base weights: "
             f"{record['files']['model']}", f"load it: {record['load']}",
             f"checked on the dev sets (measured from block {record['measured_from_block']}), merged vs unmerged:",
             f"{'precision':<10}{'dev set':<10}{'WER unmerged':>14}{'WER merged':>12}{'changed hyps':>14}"
             f"{'max |output diff|':>19}"]
    for precision, sets in record["dev"].items():
        for domain, r in sets.items():
            lines.append(f"{precision:<10}{domain:<10}{r['unmerged_wer']:>14.2f}{r['merged_wer']:>12.2f}"
                         f"{str(r['changed_hypotheses']) + '/' + str(r['utterances']):>14}"
                         f"{r['max_abs_output_diff']:>19.2e}")
    lines.append(f"export record: {record['files']['export_json']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    record = export(Path(args.results_dir), Path(args.out) if args.out else None)
    print(format_export(record))
    return 0
