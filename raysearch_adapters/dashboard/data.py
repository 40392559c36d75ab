"""Read a search's results folder (through the results layer) and shape it for the dashboard.

Never raises for what is in the folder: a missing, partial or corrupt file becomes a message
on the page and the views show what could be read. Never imports torch or ray.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import List, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from raysearch_adapters.errors import UserError
from raysearch_adapters.hparams import HPARAMS
from raysearch_adapters.results import (EPOCHS_FILE, EPOCHS_SCHEMA, HPARAM_NAMES, TRIALS_FILE, TRIALS_SCHEMA,
                                        read_table)
from raysearch_adapters.results.hypotheses import HYPOTHESES_FILE
from raysearch_adapters.results.layout import BEST_ADAPTER_FILE, CONFIG_FILE, OPTUNA_DB, SUMMARY_FILE
from raysearch_adapters.results.select import (DEFAULT_SET_ROLES, best_per_type, dev_wers, ranked, select_winner,
                                               set_entries)

# What the dashboard offers for download: these names only, never a path from the request.
DOWNLOADS = (SUMMARY_FILE, TRIALS_FILE, EPOCHS_FILE, HYPOTHESES_FILE, CONFIG_FILE, BEST_ADAPTER_FILE, OPTUNA_DB)
# The files whose change means the page must be rebuilt (the study's journal included).
_WATCHED = (TRIALS_FILE, EPOCHS_FILE, SUMMARY_FILE, HYPOTHESES_FILE, OPTUNA_DB, OPTUNA_DB + "-journal",
            OPTUNA_DB + "-wal")
# The trial table as a file, with the columns the page shows: name -> media type.
EXPORTS = {"trials.csv": "text/csv", "trials.parquet": "application/vnd.apache.parquet"}

# Trial table columns in display order: (column of trials.parquet, header).
TABLE_COLUMNS = (
    ("trial_id", "trial"), ("status", "status"), *((h.name, h.label) for h in HPARAMS),
    ("adapter_params", "adapter params"), ("adapter_percent", "% of base"),
    ("evals", "evals"), ("best_step", "best at step"),
    ("dev_wer_new", "dev WER new"), ("dev_wer_original", "dev WER original"), ("degradation", "degradation"),
    ("degradation_lower", "lower bound"), ("degradation_upper", "upper bound"), ("new_loops", "new loops"),
    ("feasible", "feasible"),
    ("wall_time_s", "time (s)"), ("device", "device"), ("error", "error"),
)


@dataclass(frozen=True)
class ViewLimits:
    """How much of a search the view carries, so that the page of a search of many thousands of trials stays
    quick (the results files keep everything; the trial table's download has every trial)."""

    curves: int = 20  # learning curves of this many trials, the best first (results.select.ranked)
    rows: int = 1000  # trial table rows (the best first), and the trials whose chart hover gives their parameters


@dataclass
class Snapshot:
    """What a results folder holds right now; ``errors`` name unreadable files, ``notes`` explain what is missing."""

    results_dir: Path
    trials: List[dict] = field(default_factory=list)
    epochs: List[dict] = field(default_factory=list)  # the evaluations of the trials whose curves are drawn
    evaluated: int = 0  # the trials with evaluations in epochs.parquet
    summary: Optional[dict] = None
    metadata: dict = field(default_factory=dict)  # trials.parquet schema metadata (kappa, num_blocks, ...)
    errors: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @cached_property
    def by_rank(self) -> List[dict]:
        """The trials, best first (:func:`~raysearch_adapters.results.select.ranked`)."""
        return ranked(self.trials)

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

    def feasibility(self) -> tuple:
        """(what is held to kappa: point | upper, the bounds' confidence), from summary.json or the tables' metadata
        (("point", None) for results written before the bounds)."""
        mode = (self.summary or {}).get("feasibility") or self.metadata.get("feasibility") or "point"
        return mode, self._setting("confidence")

    def roles(self) -> List[dict]:
        """summary.json ``sets`` (or the tables' metadata): each measured set's name and role."""
        roles = (self.summary or {}).get("sets") or self.metadata.get("sets")
        try:
            roles = json.loads(roles) if isinstance(roles, str) else roles
        except ValueError:
            roles = None
        return roles or list(DEFAULT_SET_ROLES)

    def max_new_loops(self) -> Optional[int]:
        """Original-domain dev utterances a feasible trial may newly loop on; None when not held to a limit (or not
        said)."""
        value = self._setting("max_new_loops")
        return int(value) if value is not None else None

    def degradation_limit(self) -> Optional[float]:
        """Kappa in degradation units; None when neither summary.json nor trials.parquet says."""
        return self._setting("degradation_limit")

    def num_blocks(self) -> Optional[int]:
        """The base model's number of adaptable blocks; None when neither summary.json nor trials.parquet says."""
        value = self._setting("num_blocks")
        return int(value) if value is not None else None

    def block_layout(self):
        """The base model's blocks as ``[(stack, blocks), ...]`` (an encoder and a decoder for Whisper), else its
        block count; None when neither summary.json nor trials.parquet says."""
        stacks = (self.summary or {}).get("block_stacks") or self.metadata.get("block_stacks")
        try:
            stacks = json.loads(stacks) if isinstance(stacks, str) else stacks
            if stacks:
                return [(str(name), int(n)) for name, n in stacks]
        except (TypeError, ValueError):
            pass
        return self.num_blocks()


def _number(value) -> Optional[float]:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class ResultFileError(UserError):
    """A results file the dashboard will not read: a link out of the results folder, or not a regular file."""


def result_file(results_dir: Path, name: str) -> Optional[Path]:
    """The resolved path of the results file ``name``, or None when the folder has none.

    Raises ResultFileError for a link (or a link's target) outside the resolved results folder,
    so that a folder someone else can write to never makes the dashboard read, serve or show
    another file of this machine, and for what is not a regular file (a FIFO would block a read)."""
    path = Path(results_dir) / name
    if not os.path.lexists(path):
        return None
    real = path.resolve()
    if not real.is_relative_to(Path(results_dir).resolve()):
        raise ResultFileError(f"{path}: cannot be read: a link to outside the results folder (the dashboard "
                              "reads only files inside it)")
    if not real.is_file():
        raise ResultFileError(f"{path}: cannot be read: not a regular file")
    return real


def fingerprint(results_dir: Path) -> str:
    """Changes whenever a watched file is written (names, sizes and modification times)."""
    parts = []
    for name in _WATCHED:
        try:
            real = result_file(results_dir, name)
        except ResultFileError:
            real = None  # a refused link: its own stamp, never its target's (the view shows the fingerprint)
        try:
            st = os.stat(real) if real is not None else os.lstat(results_dir / name)
        except OSError:
            continue
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _readable(results_dir: Path, name: str, errors: List[str]) -> Optional[Path]:
    try:
        return result_file(results_dir, name)
    except ResultFileError as e:
        errors.append(str(e))
        return None


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


def _curve_epochs(table: pa.Table, snap: Snapshot, curves: int) -> None:
    """Keep the evaluations of the best ``curves`` trials that have any (converting every row of a big search's
    epochs.parquet would take most of the view's time)."""
    evaluated = set(table.column("trial_id").unique().to_pylist())
    order = [r["trial_id"] for r in snap.by_rank if r["trial_id"] in evaluated]
    order += sorted(evaluated - set(order))  # evaluations of trials trials.parquet does not have (yet)
    if len(order) > curves:
        table = table.filter(pc.is_in(table.column("trial_id"), value_set=pa.array(order[:curves], pa.string())))
    snap.epochs, snap.evaluated = _rows(table), len(order)


def _finite(column: pa.Array) -> pa.Array:
    """``column`` with its NaN and infinities (at any depth) as nulls: :func:`_clean` on a table, in Arrow (in
    Python it would take seconds for a search of many thousands of trials)."""
    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array([_finite(c) for c in column.chunks], column.type)
    if pa.types.is_floating(column.type):
        return pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))
    if pa.types.is_struct(column.type):
        return pa.StructArray.from_arrays([_finite(column.field(i)) for i in range(column.type.num_fields)],
                                          fields=list(column.type), mask=column.is_null())
    if pa.types.is_list(column.type):
        start, end = column.offsets[0].as_py(), column.offsets[-1].as_py()  # a slice's items only
        return pa.ListArray.from_arrays(pc.subtract(column.offsets, start), _finite(column.values[start:end]),
                                        type=column.type, mask=column.is_null())
    return column


def _rows(table: pa.Table) -> List[dict]:
    """A table's rows as JSON-safe dicts (NaN and infinities as null)."""
    return pa.table([_finite(c) for c in table.columns], schema=table.schema).to_pylist()


def read_snapshot(results_dir: Path, curves: int = ViewLimits.curves) -> Snapshot:
    """Read trials, epochs (of the best ``curves`` trials) and summary of ``results_dir``; unreadable parts become
    errors, never exceptions."""
    snap = Snapshot(Path(results_dir))
    d = snap.results_dir
    if not d.is_dir():
        snap.errors.append(f"{d}: not a folder (expected a search's results folder, results/<search name>/)")
        return snap
    trials, epochs, summary = (_readable(d, name, snap.errors) for name in (TRIALS_FILE, EPOCHS_FILE, SUMMARY_FILE))
    if trials is not None:
        table = _read(trials, TRIALS_SCHEMA, snap.errors)
        if table is not None:
            snap.trials = _rows(table)
            snap.metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()
                             if not k.startswith(b"ARROW")}
    if epochs is not None:
        table = _read(epochs, EPOCHS_SCHEMA, snap.errors)
        if table is not None:
            _curve_epochs(table, snap, curves)
    if summary is not None:
        try:
            loaded = json.loads(summary.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise ValueError(f"expected a JSON object, got {type(loaded).__name__}")
            snap.summary = _clean(loaded)
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
    """A row of the summary table: WER per set, dev and test."""
    return {"label": label, "dev": dict(dev or {}), "test": dict(test or {})}


def set_names(snap: "Snapshot") -> List[str]:
    """The measured sets in the summary table's order (targets, then protected sets), from summary.json or the
    tables' metadata; new and original for results that do not say."""
    return [r["set"] for r in snap.roles()]


def several_protected(snap: "Snapshot") -> bool:
    return sum(r["role"] == "protected" for r in snap.roles()) > 1


def format_sets(sets: Optional[list]) -> Optional[str]:
    """A row's protected sets as table text: ``clean +0.20/1, noisy +1.10/2 (infeasible)`` (held degradation /
    limit)."""
    guarded = [s for s in set_entries(sets) if s.get("role") == "protected"]
    if not guarded:
        return None
    return ", ".join(f"{s['set']} {s['held_degradation']:+.2f}/{s['limit']:g}"
                     + ("" if s.get("feasible") else " (over)") for s in guarded)


def _own(hparams: dict) -> dict:
    """A trial's hyperparameters without those its adapter type does not have (null)."""
    return {k: v for k, v in hparams.items() if v is not None}


def _brief(row: dict) -> dict:
    return {"trial_id": row["trial_id"], "hparams": _own({k: row.get(k) for k in HPARAM_NAMES}),
            "adapter_params": row.get("adapter_params"), "adapter_percent": row.get("adapter_percent"),
            "degradation": row.get("degradation"), "degradation_lower": row.get("degradation_lower"),
            "degradation_upper": row.get("degradation_upper"), "dev_wer_new": row.get("dev_wer_new")}


def summary_view(snap: Snapshot) -> dict:
    """Base model vs winner (dev and test WERs per domain), kappa, adapter size; the best feasible trial so far
    while the search runs; with several adapter types, the best feasible trial of each (dev)."""
    s = snap.summary
    # Rows carry `feasible` as the search judged it, so no limit is needed to pick the best ones.
    feasible = [r for r in snap.trials if r.get("feasible")]
    per_type = best_per_type(feasible, math.inf)
    counts = {st: sum(r["status"] == st for r in snap.trials) for st in ("RUNNING", "COMPLETE", "PRUNED", "FAIL")}
    mode, confidence = snap.feasibility()
    out = {"search_id": snap.search_id, "state": snap.state, "degradation_limit": snap.degradation_limit(),
           "feasibility": mode, "confidence": confidence, "max_new_loops": snap.max_new_loops(),
           "sets": set_names(snap), "several_protected": several_protected(snap),
           "kappa": None, "kappa_mode": None, "units": None, "rows": [], "winner": None, "note": None,
           "per_type": [{"type": t, **_brief(r)} for t, r in per_type.items()] if len(per_type) > 1 else [],
           "counts": {"total": len(snap.trials), **counts}, "versions": None}
    if s is None:
        out["kappa"], out["kappa_mode"] = _number(snap.metadata.get("kappa")), snap.metadata.get("kappa_mode")
        best = select_winner(feasible, math.inf)
        if best is not None:
            out["rows"] = [_wers(f"best feasible so far (trial {best['trial_id']})", dev_wers(best), None)]
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
        out["winner"] = {k: w.get(k) for k in ("trial_id", "adapter_params", "adapter_percent", "degradation",
                                               "degradation_lower", "degradation_upper", "test_degradation",
                                               "test_degradation_lower", "test_degradation_upper",
                                               "binding_set")}
        out["winner"]["hparams"] = _own(w.get("hparams") or {})
    else:
        c = s.get("no_feasible_trial")
        loops = snap.max_new_loops()
        out["note"] = ("no feasible trial: every measured trial degraded the original domain by more than the "
                       "limit" + ("" if loops is None else f" or newly looped on more than {loops} dev utterance(s)")
                       + (f"; closest: trial {c.get('trial_id')}, degradation {c.get('degradation'):+.2f}"
                          + (f", {c['new_loops']} newly looping" if c.get("new_loops") else "")
                          if c and c.get("degradation") is not None else ""))
    return out


# With several protected sets the table also names the binding set and shows each set's degradation.
SET_COLUMNS = (("binding_set", "binding set"), ("sets", "per protected set (held / limit)"))


def trials_view(snap: Snapshot, rows: int = ViewLimits.rows) -> dict:
    """The trial table: columns (key, header, the schema's doc) and, as lists, the rows of the best ``rows``
    trials, best first; ``total`` trials in all and, when some are left out, a ``note`` that says so."""
    docs = {f.name: (f.metadata or {}).get(b"doc", b"").decode() for f in TRIALS_SCHEMA}
    columns = TABLE_COLUMNS + (SET_COLUMNS if several_protected(snap) else ())
    shown = snap.by_rank[:rows]
    out = {"columns": [{"key": k, "label": label, "doc": docs[k]} for k, label in columns],
           "rows": [[format_sets(r.get(k)) if k == "sets" else r.get(k) for k, _ in columns] for r in shown],
           "total": len(snap.trials), "note": None}
    if len(shown) < len(snap.trials):
        out["note"] = (f"showing the best {len(shown):,} of {len(snap.trials):,} trials (feasible first, then by "
                       f"new-domain dev WER); the full table is {TRIALS_FILE}")
    return out


def trials_export(results_dir: Path, name: str) -> Optional[bytes]:
    """The trial table as the file ``name`` of :data:`EXPORTS` (the page's columns, trials.parquet's names and
    docs), or None without trials.parquet. Raises UserError (ResultFileError, ResultsSchemaError) for a
    trials.parquet it cannot read."""
    path = result_file(Path(results_dir), TRIALS_FILE)
    if path is None:
        return None
    table = read_table(path, TRIALS_SCHEMA).select([key for key, _ in TABLE_COLUMNS])
    out = pa.BufferOutputStream()
    if name.endswith(".csv"):
        pa_csv.write_csv(table, out)
    else:
        pq.write_table(table, out)
    return out.getvalue().to_pybytes()
