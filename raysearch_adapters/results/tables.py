"""The results tables of a search: one explicit pyarrow schema each, atomic writes, checked reads.

``trials.parquet`` has one row per trial, ``epochs.parquet`` one row per dev evaluation of a
trial. The dashboard and the report read these files only, so their columns are a contract:
a file whose schema differs fails to load with the file name and the differing columns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Mapping, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from raysearch_adapters.errors import UserError
from raysearch_adapters.fileio import atomic_write
from raysearch_adapters.hparams import HPARAMS

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"

# RUNNING only appears while a search runs (the dashboard shows it live); a finished search
# has every trial COMPLETE (trained to the end), PRUNED (stopped early by ASHA) or FAIL.
TRIAL_STATUSES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL")

_DEGRADATION_DOC = ("orig_wer_adapted - orig_wer_base on original-domain dev: absolute WER points, or, "
                    "when summary.json kappa_mode is 'relative', that difference as a percentage of the "
                    "base WER")
_BOUND_DOC = ("one-sided {} confidence bound (summary.json confidence) of the degradation: a paired bootstrap "
              "over the original-domain dev utterances")
_HELD_DOC = ("the degradation feasibility holds to kappa: the degradation itself, or (summary.json feasibility "
             "'upper') its upper bound")
_LOOPS_DOC = ("original-domain dev utterances whose hypothesis loops (zlib compression ratio > 2.4) where the base "
              "model's does not")
_FEASIBLE_DOC = "held_degradation <= kappa and new_loops <= search.max_new_loops (unless null)"
_BINDING_DOC = ("the protected set the single degradation columns describe: the one furthest over (or least under) "
                "its limit ('original' unless data.protected names the sets)")
# Every measured set of an evaluation: the new-domain targets (dev_wer only), then the protected sets.
SET_TYPE = pa.list_(pa.struct([
    pa.field("set", pa.string()), pa.field("role", pa.string()), pa.field("dev_wer", pa.float64()),
    pa.field("base_dev_wer", pa.float64()), pa.field("degradation", pa.float64()),
    pa.field("degradation_lower", pa.float64()), pa.field("degradation_upper", pa.float64()),
    pa.field("held_degradation", pa.float64()), pa.field("limit", pa.float64()), pa.field("new_loops", pa.int64()),
    pa.field("feasible", pa.bool_())]))
_SETS_DOC = ("every set measured at the evaluation: set (its name), role (target | protected), dev_wer, and for a "
             "protected set base_dev_wer, degradation, its bounds, held_degradation, limit (kappa in degradation "
             "units), new_loops, feasible")


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={b"doc": doc.encode()})


# The searched hyperparameters (raysearch_adapters.hparams), in the table's order; a parameter of other adapter
# types only is null in a trial's row.
_ARROW_TYPES = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}
HPARAM_FIELDS = [_f(h.name, _ARROW_TYPES[h.kind], h.doc) for h in HPARAMS]
HPARAM_NAMES = tuple(f.name for f in HPARAM_FIELDS)

TRIALS_SCHEMA = pa.schema([
    _f("search_id", pa.string(), "search.name", nullable=False),
    _f("trial_id", pa.string(), "Ray Tune trial id", nullable=False),
    _f("trial_number", pa.int64(), "1-based order in which the search created its trials"),
    *HPARAM_FIELDS,
    _f("adapter_params", pa.int64(), "trainable adapter parameters"),
    _f("adapter_percent", pa.float64(), "adapter parameters as % of the base model's"),
    _f("status", pa.string(), "RUNNING | COMPLETE | PRUNED | FAIL", nullable=False),
    _f("evals", pa.int64(), "dev evaluations done"),
    _f("step", pa.int64(), "optimiser step of the last evaluation"),
    # The trial's result is its best evaluation: the feasible one with the lowest new-domain dev
    # WER, else the least infeasible one; its adapter is the trial's checkpoint.
    _f("best_step", pa.int64(), "optimiser step of the trial's best evaluation (its result and checkpoint)"),
    _f("dev_wer_new", pa.float64(), "new-domain dev WER (%) of the best evaluation"),
    _f("dev_wer_original", pa.float64(), "original-domain dev WER (%) with adapters, best evaluation"),
    _f("degradation", pa.float64(), _DEGRADATION_DOC + "; best evaluation"),
    _f("degradation_lower", pa.float64(), _BOUND_DOC.format("lower") + "; best evaluation"),
    _f("degradation_upper", pa.float64(), _BOUND_DOC.format("upper") + "; best evaluation"),
    _f("held_degradation", pa.float64(), _HELD_DOC + "; best evaluation"),
    _f("new_loops", pa.int64(), _LOOPS_DOC + "; best evaluation"),
    _f("feasible", pa.bool_(), _FEASIBLE_DOC + "; best evaluation"),
    _f("binding_set", pa.string(), _BINDING_DOC + "; best evaluation"),
    _f("sets", SET_TYPE, _SETS_DOC + "; best evaluation"),
    _f("base_dev_wer_original", pa.float64(),
       "original-domain dev WER (%) of the base model measured on this trial's path (same blocks, precision)"),
    _f("wall_time_s", pa.float64(), "seconds from the trial's start to its last result"),
    _f("device", pa.string(), "device of rank 0 (cpu, cuda:0 NVIDIA H100 ...)"),
    _f("threads", pa.int64(), "torch CPU threads of rank 0 (resources.threads_per_worker, else its CPU share)"),
    _f("node_id", pa.string(), "Ray node id of rank 0"),
    _f("checkpoint_path", pa.string(), "checkpoint holding the best evaluation's adapter (best_adapter.pt)"),
    _f("error", pa.string(), "first line of the error of a FAIL trial"),
])

EPOCHS_SCHEMA = pa.schema([
    _f("search_id", pa.string(), "search.name", nullable=False),
    _f("trial_id", pa.string(), "Ray Tune trial id", nullable=False),
    _f("step", pa.int64(), "optimiser step", nullable=False),
    _f("eval_index", pa.int64(), "1-based evaluation number (the ASHA time attribute)", nullable=False),
    _f("train_loss", pa.float64(), "mean training loss since the previous evaluation (all terms)"),
    _f("supervised_loss", pa.float64(), "mean supervised loss (new domain + replay) since the previous evaluation"),
    _f("distill_loss", pa.float64(), "mean distillation KL since the previous evaluation (null: no distillation)"),
    _f("dev_wer_new", pa.float64(), "new-domain dev WER (%)"),
    _f("dev_wer_original", pa.float64(), "original-domain dev WER (%) with adapters"),
    _f("degradation", pa.float64(), _DEGRADATION_DOC),
    _f("degradation_lower", pa.float64(), _BOUND_DOC.format("lower")),
    _f("degradation_upper", pa.float64(), _BOUND_DOC.format("upper")),
    _f("held_degradation", pa.float64(), _HELD_DOC),
    _f("new_loops", pa.int64(), _LOOPS_DOC),
    _f("feasible", pa.bool_(), _FEASIBLE_DOC),
    _f("binding_set", pa.string(), _BINDING_DOC),
    _f("sets", SET_TYPE, _SETS_DOC),
    _f("lr", pa.float64(), "learning rate at this step"),
    _f("time_s", pa.float64(), "seconds since the trial's training started"),
])


class ResultsSchemaError(UserError):
    """A results file whose columns differ from the schema this version reads."""


def to_table(rows: Iterable[Mapping], schema: pa.Schema) -> pa.Table:
    """Rows (dicts keyed by column) as a table of ``schema``; an unknown key is an error, a missing one null."""
    rows = list(rows)
    names = set(schema.names)
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - names)
        if unknown:
            raise ValueError(f"row {i}: unknown columns {unknown}; the schema has {schema.names}")
    return pa.Table.from_pylist(rows, schema=schema)


def write_table(path: os.PathLike | str, rows: Iterable[Mapping], schema: pa.Schema,
                metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write ``rows`` as Parquet at ``path`` atomically (temp file + rename: readers never see half a file)."""
    table = to_table(rows, schema)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_table(path: os.PathLike | str, schema: pa.Schema) -> pa.Table:
    """The table at ``path``, checked against ``schema`` (names and types of every column)."""
    path = Path(path)
    if not path.is_file():
        raise ResultsSchemaError(f"{path}: results file not found")
    try:
        found = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ResultsSchemaError(f"{path}: not a readable Parquet file ({e})") from None
    expected = {f.name: f.type for f in schema}
    got = {f.name: f.type for f in found}
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    wrong = [f"{n} ({got[n]}, expected {expected[n]})" for n in expected if n in got and got[n] != expected[n]]
    if missing or extra or wrong:
        parts = [f"{label}: {', '.join(items)}" for label, items in
                 (("missing", missing), ("unexpected", extra), ("wrong type", wrong)) if items]
        raise ResultsSchemaError(f"{path}: columns differ from this version's schema; {'; '.join(parts)}")
    return pq.read_table(path, schema=found).select(schema.names)


def read_rows(path: os.PathLike | str, schema: pa.Schema) -> List[dict]:
    """The rows of :func:`read_table` as dicts."""
    return read_table(path, schema).to_pylist()
