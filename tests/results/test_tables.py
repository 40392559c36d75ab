"""Results tables: explicit schemas, atomic writes, reads that fail on a schema mismatch."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysearch_adapters.config import SpaceConfig
from raysearch_adapters.results import (EPOCHS_SCHEMA, HPARAM_NAMES, TRIALS_SCHEMA, ResultsSchemaError, read_rows,
                                        read_table, write_table)

ROW = {"search_id": "s", "trial_id": "t1", "dim": 8, "blocks": "top:2", "position": "post", "lr": 1e-3,
       "dropout": 0.0, "stochastic_depth": 0.0, "l2_lambda": 0.0, "weight_decay": 0.0, "steps": 10,
       "specaugment": True, "status": "COMPLETE", "dev_wer_new": 20.5, "degradation": 0.4, "feasible": True}


def test_hyperparameter_columns_are_the_search_space():
    assert HPARAM_NAMES == tuple(f.name for f in dataclasses.fields(SpaceConfig))
    assert set(HPARAM_NAMES) <= set(TRIALS_SCHEMA.names)


def test_round_trip_keeps_values_and_fills_missing_columns_with_null(tmp_path):
    path = tmp_path / "trials.parquet"
    write_table(path, [ROW], TRIALS_SCHEMA, {"kappa_mode": "absolute"})
    (row,) = read_rows(path, TRIALS_SCHEMA)
    assert {k: row[k] for k in ROW} == ROW and row["error"] is None and row["wall_time_s"] is None
    assert pq.read_schema(path).metadata[b"kappa_mode"] == b"absolute"
    assert [p.name for p in tmp_path.iterdir()] == ["trials.parquet"]  # no temp file left behind


def test_unknown_column_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown columns \\['dev_wer'\\]"):
        write_table(tmp_path / "e.parquet", [{"dev_wer": 1.0}], EPOCHS_SCHEMA)
    assert not (tmp_path / "e.parquet").exists()


def test_read_fails_naming_the_differing_columns(tmp_path):
    path = tmp_path / "epochs.parquet"
    other = pa.table({"trial_id": ["t"], "step": pa.array([1.5]), "extra": [1]})
    pq.write_table(other, path)
    with pytest.raises(ResultsSchemaError, match="missing: search_id.*unexpected: extra.*wrong type: step"):
        read_table(path, EPOCHS_SCHEMA)


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "trials.parquet"
    write_table(path, [ROW], TRIALS_SCHEMA)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        write_table(path, [{**ROW, "dim": "not a number"}], TRIALS_SCHEMA)
    assert read_rows(path, TRIALS_SCHEMA)[0]["dim"] == 8
