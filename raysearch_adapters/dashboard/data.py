"""Read a search's results folder (through the results layer) and shape it for the dashboard.

Never raises for what is in the folder: a missing, partial or corrupt file becomes a message
on the page and the views show what could be read. Never imports torch or ray.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import pyarrow as pa

from raysearch_adapters.errors import UserError
from raysearch_adapters.results import (EPOCHS_FILE, EPOCHS_SCHEMA, HPARAM_NAMES, TRIALS_FILE, TRIALS_SCHEMA,
                                        read_table)
from raysearch_adapters.results.select import select_winner

SUMMARY_FILE = "summary.json"
OPTUNA_DB = "optuna.db"
# What the dashboard offers for download: these names only, never a path from the request.
DOWNLOADS = (SUMMARY_FILE, TRIALS_FILE, EPOCHS_FILE, "config.yaml", "best_adapter.pt", OPTUNA_DB)
# The files whose change means the page must be rebuilt (the study's journal included).
_WATCHED = (TRIALS_FILE, EPOCHS_FILE, SUMMARY_FILE, OPTUNA_DB, OPTUNA_DB + "-journal", OPTUNA_DB + "-wal")

# Trial table columns in display order: (column of trials.parquet, header).
TABLE_COLUMNS = (
    ("trial_id", "trial"), ("status", "status"), ("dim", "dim"), ("blocks", "blocks"), ("position", "position"),
    ("lr", "lr"), ("dropout", "dropout"), ("stochastic_depth", "stoch. depth"), ("l2_lambda", "L2"),
    ("weight_decay", "weight decay"), ("steps", "steps"), ("specaugment", "SpecAugment"),
    ("adapter_params", "adapter params"), ("adapter_percent", "% of base"), ("evals", "evals"),
    ("dev_wer_new", "dev WER new"), ("dev_wer_original", "dev WER original"), ("degradation", "degradation"),
    ("feasible", "feasible"), ("wall_time_s", "time (s)"), ("device", "device"), ("error", "error"),
)


@dataclass
class Snapshot:
    """What a results folder holds right now; ``errors`` name unreadable files, ``notes`` explain what is missing."""

    results_dir: Path
    trials: List[dict] = field(default_factory=list)
    epochs: List[dict] = field(default_factory=list)
    summary: Optional[dict] = None
    metadata: dict = field(default_factory=dict)  # trials.parquet schema metadata (kappa, num_blocks, ...)
    errors: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """``finished`` (summary.json written), ``running`` (trials, no summary yet), ``error`` or ``empty``."""
        if self.summary is not None:
            return "finished"
        if self.trials:
            return "running"
        return "error" if self.errors else "empty"

    @property
    def search_id(self) -> Optional[str]:
        """The search's name, from the summary or the trials."""
        if self.summary is not None:
            return self.summary.get("search_id")
        return self.trials[0]["search_id"] if self.trials else None

    def _setting(self, key: str) -> Optional[float]:
        # summary.json once the search ended; the tables' metadata (written from the first trial) before.
        value = _number((self.summary or {}).get(key))
        return value if value is not None else _number(self.metadata.get(key))

    def degradation_limit(self) -> Optional[float]:
        """Kappa in degradation units; None when neither summary.json nor trials.parquet says."""
        return self._setting("degradation_limit")

    def num_blocks(self) -> Optional[int]:
        """The base model's number of adaptable blocks; None when neither summary.json nor trials.parquet says."""
        value = self._setting("num_blocks")
        return int(value) if value is not None else None


def _number(value) -> Optional[float]:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fingerprint(results_dir: Path) -> str:
    """Changes whenever a watched file is written (names, sizes and modification times)."""
    parts = []
    for name in _WATCHED:
        try:
            st = os.stat(results_dir / name)
        except OSError:
            continue
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _read(path: Path, schema: pa.Schema, errors: List[str]) -> Optional[pa.Table]:
    try:
        return read_table(path, schema)
    except (UserError, pa.ArrowException, OSError) as e:
        # A file cut short mid-copy or written by another version: say which and how, keep serving.
        errors.append(str(e) if str(e).startswith(str(path)) else f"{path}: cannot be read: {e}")
        return None


def _clean(value):
    """JSON-safe: NaN and infinities become null (browsers refuse them in JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_snapshot(results_dir: Path) -> Snapshot:
    """Read trials, epochs and summary of ``results_dir``; unreadable parts become errors, never exceptions."""
    snap = Snapshot(Path(results_dir))
    d = snap.results_dir
    if not d.is_dir():
        snap.errors.append(f"{d}: not a folder (expected a search's results folder, results/<search name>/)")
        return snap
    if (d / TRIALS_FILE).is_file():
        table = _read(d / TRIALS_FILE, TRIALS_SCHEMA, snap.errors)
        if table is not None:
            snap.trials = _clean(table.to_pylist())
            snap.metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()
                             if not k.startswith(b"ARROW")}
    if (d / EPOCHS_FILE).is_file():
        table = _read(d / EPOCHS_FILE, EPOCHS_SCHEMA, snap.errors)
        snap.epochs = _clean(table.to_pylist()) if table is not None else []
    if (d / SUMMARY_FILE).is_file():
        try:
            summary = json.loads((d / SUMMARY_FILE).read_text(encoding="utf-8"))
            if not isinstance(summary, dict):
                raise ValueError(f"expected a JSON object, got {type(summary).__name__}")
            snap.summary = _clean(summary)
        except (ValueError, OSError) as e:
            snap.errors.append(f"{d / SUMMARY_FILE}: cannot be read: {e}")
    if snap.state == "empty":
        snap.notes.append(f"No results yet in {d}: no {TRIALS_FILE} or {SUMMARY_FILE}. Start a search "
                             "(raysearch-adapters search) or open results/<search name>/; this page refreshes "
                             "by itself.")
    elif snap.state == "running":
        snap.notes.append(f"Search running (or interrupted): {SUMMARY_FILE} is written when it ends; the base "
                             "model's WERs, the winner and its test WERs appear then.")
    return snap


def _wers(label: str, dev: Optional[dict], test: Optional[dict]) -> dict:
    dev, test = dev or {}, test or {}
    return {"label": label, "dev_new": dev.get("new"), "dev_original": dev.get("original"),
            "test_new": test.get("new"), "test_original": test.get("original")}


def _brief(row: dict) -> dict:
    return {"trial_id": row["trial_id"], "hparams": {k: row.get(k) for k in HPARAM_NAMES},
            "adapter_params": row.get("adapter_params"), "adapter_percent": row.get("adapter_percent"),
            "degradation": row.get("degradation")}


def summary_view(snap: Snapshot) -> dict:
    """Base model vs winner (dev and test WERs per domain), kappa, adapter size; the best feasible trial so far
    while the search runs."""
    s = snap.summary
    counts = {st: sum(r["status"] == st for r in snap.trials) for st in ("RUNNING", "COMPLETE", "PRUNED", "FAIL")}
    out = {"search_id": snap.search_id, "state": snap.state, "degradation_limit": snap.degradation_limit(),
           "kappa": None, "kappa_mode": None, "units": None, "rows": [], "winner": None, "note": None,
           "counts": {"total": len(snap.trials), **counts}, "versions": None}
    if s is None:
        out["kappa"], out["kappa_mode"] = _number(snap.metadata.get("kappa")), snap.metadata.get("kappa_mode")
        # Rows carry `feasible` as the search judged it, so no limit is needed to pick the best one so far.
        best = select_winner([r for r in snap.trials if r.get("feasible")], math.inf)
        if best is not None:
            out["rows"] = [_wers(f"best feasible so far (trial {best['trial_id']})",
                                 {"new": best["dev_wer_new"], "original": best["dev_wer_original"]}, None)]
            out["winner"] = _brief(best)
            out["note"] = "dev WERs only: the winner is evaluated on test once, when the search ends"
        elif snap.trials:
            out["note"] = "no feasible trial yet"
        return out
    out.update(kappa=s.get("kappa"), kappa_mode=s.get("kappa_mode"), units=s.get("degradation_units"),
               versions=s.get("versions"))
    base = s.get("baseline") or {}
    out["rows"].append(_wers("base model", base.get("dev"), base.get("test")))
    w = s.get("winner")
    if w:
        out["rows"].append(_wers(f"winner (trial {w.get('trial_id')})", w.get("dev"), w.get("test")))
        out["winner"] = {k: w.get(k) for k in ("trial_id", "hparams", "adapter_params", "adapter_percent",
                                                 "degradation")}
    else:
        c = s.get("no_feasible_trial")
        out["note"] = ("no feasible trial: every measured trial degraded the original domain by more than the "
                       "limit" + (f"; closest: trial {c.get('trial_id')}, degradation {c.get('degradation'):+.2f}"
                                  if c and c.get("degradation") is not None else ""))
    return out


def trials_view(snap: Snapshot) -> dict:
    """The trial table: columns (key, header, the schema's doc) and rows as lists."""
    docs = {f.name: (f.metadata or {}).get(b"doc", b"").decode() for f in TRIALS_SCHEMA}
    return {"columns": [{"key": k, "label": label, "doc": docs[k]} for k, label in TABLE_COLUMNS],
            "rows": [[r.get(k) for k, _ in TABLE_COLUMNS] for r in snap.trials]}
