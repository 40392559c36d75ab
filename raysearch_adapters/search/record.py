"""A Ray Tune callback that keeps ``trials.parquet`` and ``epochs.parquet`` current while the search runs.

It is the one writer of both tables: the live dashboard reads them as trials start,
report and finish, and the final selection reads them at the end. On ``--resume`` it
starts from the tables on disk; a restarted trial's evaluations replace its earlier rows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

from ray.tune import Callback

from raysearch_adapters.results.tables import (EPOCHS_FILE, EPOCHS_SCHEMA, HPARAM_NAMES, TRIALS_FILE,
                                               TRIALS_SCHEMA, read_rows, write_table)
from raysearch_adapters.results.select import set_entries
from raysearch_adapters.search.summary import format_bounds, format_hparams

# A result's keys that go to the trial row as they are: the trial's best evaluation (its result)
# and what stays fixed; this evaluation's own values (eval_*) go to the epoch row.
_METRIC_COLUMNS = ("adapter_params", "adapter_percent", "step", "best_step", "dev_wer_new", "dev_wer_original",
                   "degradation", "degradation_lower", "degradation_upper", "held_degradation", "new_loops", "feasible",
                   "binding_set", "sets",
                   "base_dev_wer_original", "device", "threads", "node_id")
_EPOCH_COLUMNS = {"step": "step", "eval_index": "eval_index", "train_loss": "train_loss",
                  "supervised_loss": "supervised_loss", "distill_loss": "distill_loss",
                  "dev_wer_new": "eval_dev_wer_new", "dev_wer_original": "eval_dev_wer_original",
                  "degradation": "eval_degradation", "degradation_lower": "eval_degradation_lower",
                  "degradation_upper": "eval_degradation_upper", "held_degradation": "eval_held_degradation",
                  "new_loops": "eval_new_loops", "binding_set": "eval_binding_set", "sets": "eval_sets",
                  "feasible": "eval_feasible", "lr": "lr", "time_s": "time_s"}
_EXCEPTION_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Interrupt)\b.*")


def _cell(column: str, value):
    """A result's value as its table column holds it: ``sets`` as a list (a result holds them by name)."""
    return set_entries(value) if column == "sets" and value is not None else value


def error_summary(text: Optional[str]) -> str:
    """The most telling line of an error trace: the last ``SomethingError: ...`` line (else the last line)."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    named = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    return (named or lines or ["unknown error"])[-1][:500]


class TablesRecorder(Callback):
    """Writes a trial row at start, on every result and at the end, and an epoch row per evaluation."""

    def __init__(self, results_dir: str, search_id: str, metadata: Dict[str, str]):
        self.results_dir = Path(results_dir)
        self.search_id = search_id
        self.metadata = dict(metadata)  # stored in both files' schema metadata (kappa, kappa_mode, ...)
        self.trials: Dict[str, dict] = {}
        self.epochs: Dict[Tuple[str, int], dict] = {}

    def setup(self, **info) -> None:
        """Start from the tables of an interrupted run, if any."""
        self.trials, self.epochs = load_tables(self.results_dir)

    def _row(self, trial) -> dict:
        row = self.trials.get(trial.trial_id)
        if row is None:
            number = trial.experiment_tag.split("_", 1)[0]  # Tune's tag starts with its trial counter
            row = {"search_id": self.search_id, "trial_id": trial.trial_id, "evals": 0,
                   "trial_number": int(number) if number.isdigit() else None,
                   **{k: trial.config.get(k) for k in HPARAM_NAMES}}
            self.trials[trial.trial_id] = row
        return row

    def _save(self) -> None:
        save_tables(self.results_dir, self.trials, self.epochs, self.metadata)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        """A trial (new or restarted) is RUNNING; a restart forgets the evaluations it will redo."""
        row = self._row(trial)
        row.update(status="RUNNING", error=None)
        self._save()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        """One evaluation: an epoch row and the trial row's latest metrics."""
        if "eval_index" not in result:
            return
        row = self._row(trial)
        row.update({k: _cell(k, result.get(k)) for k in _METRIC_COLUMNS}, evals=result["eval_index"],
                   wall_time_s=result.get("time_total_s"))
        if result.get("checkpoint_path"):  # a Ray Train trial's checkpoint (TuneReportCallback adds it)
            row["checkpoint_path"] = result["checkpoint_path"]
        self.epochs[(trial.trial_id, result["eval_index"])] = {
            "search_id": self.search_id, "trial_id": trial.trial_id,
            **{column: _cell(column, result.get(key)) for column, key in _EPOCH_COLUMNS.items()}}
        # Evaluations after this one belong to an earlier attempt of a restarted trial.
        for key in [k for k in self.epochs if k[0] == trial.trial_id and k[1] > result["eval_index"]]:
            del self.epochs[key]
        self._save()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        """The checkpoint of a trial that trains in its Tune actor (saved after its result; it holds the best
        evaluation's adapter)."""
        row = self._row(trial)
        row["checkpoint_path"] = checkpoint.path
        self._save()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """COMPLETE when the last result is the trial's final evaluation, else PRUNED (stopped by ASHA)."""
        row = self._row(trial)
        row["status"] = "COMPLETE" if (trial.last_result or {}).get("final") else "PRUNED"
        self._save()
        _print_trial(row)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """FAIL, with the error's telling line."""
        row = self._row(trial)
        row.update(status="FAIL", error=error_summary(_error_text(trial)))
        self._save()
        _print_trial(row)


def load_tables(results_dir: Path) -> Tuple[Dict[str, dict], Dict[Tuple[str, int], dict]]:
    """Trial rows by trial id and epoch rows by (trial id, eval index); empty when not written yet."""
    trials, epochs = {}, {}
    if (results_dir / TRIALS_FILE).is_file():
        trials = {r["trial_id"]: r for r in read_rows(results_dir / TRIALS_FILE, TRIALS_SCHEMA)}
    if (results_dir / EPOCHS_FILE).is_file():
        epochs = {(r["trial_id"], r["eval_index"]): r for r in read_rows(results_dir / EPOCHS_FILE, EPOCHS_SCHEMA)}
    return trials, epochs


def save_tables(results_dir: Path, trials: Dict[str, dict], epochs: Dict[Tuple[str, int], dict],
                metadata: Dict[str, str]) -> None:
    """Write both tables atomically (epochs ordered by trial and evaluation)."""
    write_table(results_dir / TRIALS_FILE, trials.values(), TRIALS_SCHEMA, metadata)
    rows = sorted(epochs.values(), key=lambda r: (r["trial_id"], r["eval_index"]))
    write_table(results_dir / EPOCHS_FILE, rows, EPOCHS_SCHEMA, metadata)


def keep_only_trials(results_dir: Path, trial_ids: Iterable[str], metadata: Dict[str, str]) -> None:
    """Drop rows of trials that are not part of the search (attempts of a driver killed before Tune saved them)."""
    keep = set(trial_ids)
    trials, epochs = load_tables(results_dir)
    save_tables(results_dir, {k: v for k, v in trials.items() if k in keep},
                {k: v for k, v in epochs.items() if k[0] in keep}, metadata)


def _error_text(trial) -> Optional[str]:
    # The trace is written to the trial's local folder first; storage gets it at the next sync.
    local = trial.error_file
    if local and Path(local).is_file():
        return Path(local).read_text(errors="replace")
    return trial.get_error()


def _print_trial(row: dict) -> None:
    hp = format_hparams({k: row[k] for k in HPARAM_NAMES})
    if row["status"] == "FAIL" or row.get("dev_wer_new") is None or row.get("degradation") is None:
        print(f"trial {row['trial_id']} {row['status']} ({hp}): {row.get('error') or 'no evaluation'}", flush=True)
        return
    print(f"trial {row['trial_id']} {row['status']} after {row['evals']} evals ({hp}): best at step "
          f"{row['best_step']}: dev WER new {row['dev_wer_new']:.1f}, original {row['dev_wer_original']:.1f}, "
          f"degradation {row['degradation']:+.2f}"
          f"{format_bounds(row.get('degradation_lower'), row.get('degradation_upper'))}"
          f"{'' if row['feasible'] else ' (infeasible)'}", flush=True)

