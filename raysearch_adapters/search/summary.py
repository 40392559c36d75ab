"""``summary.json`` of a search and the table printed at its end (base model vs winner, dev and test)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from pathlib import Path
from typing import Optional

import raysearch_adapters
from raysearch_adapters.fileio import atomic_write_text
from raysearch_adapters.config import Config
from raysearch_adapters.results.tables import HPARAM_NAMES

SUMMARY_FILE = "summary.json"
BEST_ADAPTER_FILE = "best_adapter.pt"


def versions() -> dict:
    """Versions that decide how an adapter behaves (NeMo#15911: adapters differ across framework versions)."""
    out = {"raysearch-adapters": raysearch_adapters.__version__}
    for dist in ("torch", "torchaudio", "ray", "optuna"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def load_instructions(cfg: Config, adapter_file: Path) -> str:
    """How to use the winner's adapter file."""
    return (f"raysearch-adapters evaluate --model {cfg.model.checkpoint if cfg.model.name == 'conformer_ctc' else cfg.model.bundle} "
            f"--adapter {adapter_file} --manifest MANIFEST   |   Python: "
            f"load_adapter('{adapter_file}', load_base_model(model_cfg)) "
            "from raysearch_adapters.adapters.state and raysearch_adapters.models.registry")


def _trial_brief(row: dict) -> dict:
    return {"trial_id": row["trial_id"], "status": row["status"], "hparams": {k: row[k] for k in HPARAM_NAMES},
            "adapter_params": row["adapter_params"], "adapter_percent": row["adapter_percent"],
            "dev": {"new": row["dev_wer_new"], "original": row["dev_wer_original"]},
            "degradation": row["degradation"], "checkpoint_path": row["checkpoint_path"]}


def build_summary(cfg: Config, rows: list, limit: float, baseline: dict, winner: Optional[dict],
                  winner_test: Optional[dict], infeasible: Optional[dict], front: list, paths: dict,
                  num_blocks: Optional[int] = None, timings: Optional[dict] = None) -> dict:
    """Everything a reader of the search needs, as JSON-able data."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")}
    out = {
        "search_id": cfg.search.name,
        "kappa": cfg.search.kappa, "kappa_mode": cfg.search.kappa_mode, "degradation_limit": limit,
        "degradation_units": "WER points" if cfg.search.kappa_mode == "absolute" else "percent of the base WER",
        "num_blocks": num_blocks,  # adaptable blocks of the base model (the dashboard draws placements)
        "baseline": baseline,
        "winner": None,
        "no_feasible_trial": None,
        "pareto_front": [_trial_brief(r) for r in front],
        "trials": {"total": len(rows), **counts},
        "search": {"sampler": cfg.search.sampler, "num_trials": cfg.search.num_trials, "seed": cfg.search.seed,
                   "asha": dataclasses.asdict(cfg.search.asha), "space": dataclasses.asdict(cfg.search.space),
                   "grid": dataclasses.asdict(cfg.search.grid), "train": dataclasses.asdict(cfg.train),
                   "resources": dataclasses.asdict(cfg.resources), "model": dataclasses.asdict(cfg.model)},
        "versions": versions(),
        "paths": paths,
        # wall seconds: setup (model, features, base WERs), trials (the Tune run), final test evaluation
        "timings_s": timings,
    }
    if winner is not None:
        out["winner"] = {**_trial_brief(winner), "test": winner_test, "adapter_file": paths["best_adapter"],
                         "load": load_instructions(cfg, Path(paths["best_adapter"]))}
    elif infeasible is not None:
        out["no_feasible_trial"] = {**_trial_brief(infeasible), "over_limit_by": infeasible["degradation"] - limit}
    return out


def write_summary(path: Path, summary: dict) -> None:
    """Write ``summary.json`` atomically."""
    atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_summary(summary: dict) -> str:
    """The end-of-search report: base vs winner on dev and test of both domains, then where everything is."""
    b, w = summary["baseline"], summary["winner"]
    units = "points" if summary["kappa_mode"] == "absolute" else "% of base"
    lines = [f"search {summary['search_id']}: {summary['trials']['total']} trials "
             f"({summary['trials']['COMPLETE']} complete, {summary['trials']['PRUNED']} pruned by ASHA, "
             f"{summary['trials']['FAIL']} failed); feasible = original-domain dev degradation <= "
             f"{summary['degradation_limit']:g} {units}", "",
             f"{'WER %':<28}{'dev new':>10}{'dev orig':>10}{'test new':>10}{'test orig':>10}",
             f"{'base model':<28}" + "".join(f"{_fmt(v):>10}" for v in (
                 b["dev"]["new"], b["dev"]["original"], b["test"]["new"], b["test"]["original"]))]
    if w is not None:
        lines.append(f"{'winner (trial ' + w['trial_id'] + ')':<28}" + "".join(f"{_fmt(v):>10}" for v in (
            w["dev"]["new"], w["dev"]["original"], w["test"]["new"], w["test"]["original"])))
        hp = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in w["hparams"].items())
        lines += ["", f"winner: {hp}; {w['adapter_params']} adapter params ({w['adapter_percent']:.2f} % of base); "
                      f"dev degradation {w['degradation']:+.2f} {units} (chosen on dev; test evaluated once)"]
    else:
        lines += ["", "NO FEASIBLE TRIAL: every measured trial degraded the original domain by more than "
                      f"{summary['degradation_limit']:g} {units}; no winner is chosen."]
        c = summary["no_feasible_trial"]
        if c is not None:
            lines.append(f"closest: trial {c['trial_id']} with degradation {c['degradation']:+.2f} {units} "
                         f"({c['over_limit_by']:.2f} over the limit), dev WER new {c['dev']['new']:.2f}; try a "
                         "larger search.kappa, smaller dims or learning rates, or adapters in fewer blocks")
    p = summary["paths"]
    lines += ["", f"results:      {p['results_dir']}",
              f"tables:       {p['trials']}, {p['epochs']}",
              f"Optuna study: {p['study_storage']}  (view: optuna-dashboard {p['study_storage']})"]
    if w is not None:
        lines += [f"best adapter: {w['adapter_file']}", f"load it:      {w['load']}"]
    lines.append(f"summary:      {p['summary']}")
    t = summary.get("timings_s")
    if t:
        lines.append(f"wall time:    {t['total'] / 60:.1f} min (setup {t['setup']:.0f} s, trials {t['trials']:.0f} s, "
                     f"test evaluation {t['test']:.0f} s)")
    return "\n".join(lines)
