"""What a search's results folder holds, beside its tables (``TRIALS_FILE``, ``EPOCHS_FILE`` in
:mod:`.tables`, ``HYPOTHESES_FILE`` in :mod:`.hypotheses`): one name per file, for the search that writes
them and the export, dashboard and report that read them."""

CONFIG_FILE = "config.yaml"  # the search's resolved config
SUMMARY_FILE = "summary.json"  # the winner, its test WERs and what the search spent
BEST_ADAPTER_FILE = "best_adapter.pt"  # the winner's adapter (adapters.state format)
OPTUNA_DB = "optuna.db"  # the Optuna study (SQLite) unless results.study_storage names another
