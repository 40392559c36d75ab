"""Results of a search: the tables (one pyarrow schema each) the dashboard and the report read."""

from raysearch_adapters.results.tables import (EPOCHS_FILE, EPOCHS_SCHEMA, HPARAM_NAMES, TRIAL_STATUSES,
                                               TRIALS_FILE, TRIALS_SCHEMA, ResultsSchemaError, read_rows,
                                               read_table, write_table)

__all__ = ["EPOCHS_FILE", "EPOCHS_SCHEMA", "HPARAM_NAMES", "TRIAL_STATUSES", "TRIALS_FILE", "TRIALS_SCHEMA",
           "ResultsSchemaError", "read_rows", "read_table", "write_table"]
