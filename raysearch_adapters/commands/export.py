"""``raysearch-adapters export RESULTS_DIR [--out DIR] [--ct2-quantization Q]``: a search's LoRA winner merged into
the base model and checked on the dev sets, with its PEFT folder and CTranslate2 model where the backbone has them
(:mod:`raysearch_adapters.export.merged`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from raysearch_adapters.export.merged import export


def _peft_lines(peft: dict) -> list:
    if not peft["written"]:
        return [peft["reason"]]
    wers = ", ".join(f"{domain} {r['peft_wer']:.2f}" for domain, r in peft["dev"]["fp32"].items())
    if peft["reproduces_unmerged"]:
        return [f"PEFT adapter folder: {peft['folder']} (through peft's layers it reproduces the unmerged adapter's "
                f"transcripts on the dev sets: WER {wers})", f"load it: {peft['load']}"]
    return [f"WARNING: the PEFT adapter folder {peft['folder']} does not reproduce the unmerged adapter (WER {wers}; "
            "see peft in export.json)"]


def _ct2_lines(ct2: dict) -> list:
    if not ct2["written"]:
        return [ct2["reason"]]
    sets = ", ".join(f"{domain} {r['ct2_wer']:.2f} vs {r['merged_wer']:.2f} ({r['wer_difference']:+.2f}), "
                     f"{len(r['looping'])} looping" for domain, r in ct2["dev"].items())
    return [f"CTranslate2 model ({ct2['quantization']}): {ct2['folder']}", f"checked on the dev sets, WER CT2 vs "
            f"merged: {sets}", f"load it: {ct2['load']}", *ct2["warnings"]]


def format_export(record: dict) -> str:
    """What ``export`` prints: what was written, and for a merge the difference per precision and dev set, the
    PEFT folder and the CTranslate2 model (or why there is none) and any warning."""
    if not record["merged"]:
        return (f"{record['reason']}.\nwrote the adapter-only file instead: {record['files']['adapter']}\n"
                f"load it: {record['load']}\n{record['peft']['reason']}\n"
                f"export record: {record['files']['export_json']}")
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
    lines += _peft_lines(record["peft"])
    if "ctranslate2" in record:
        lines += _ct2_lines(record["ctranslate2"])
    lines.append(f"export record: {record['files']['export_json']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    record = export(Path(args.results_dir), Path(args.out) if args.out else None,
                    ct2_quantization=args.ct2_quantization)
    print(format_export(record))
    return 0
