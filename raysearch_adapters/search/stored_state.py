"""What waits until the experiment state on storage, the one ``--resume`` reads, records it.

Tune saves its experiment state to the driver's staging folder and copies it to the storage
path afterwards, in a background thread. Two things must not run ahead of that copy:

* Deleting a trial's older checkpoints. Tune's ``CheckpointConfig(num_to_keep=k)`` deletes one
  the moment it registers a newer one; a driver killed before the copy leaves a stored state
  naming a checkpoint that is gone, and the resumed trial fails ("Could not recover from
  checkpoint as it does not exist on storage anymore"; seen in CI on a SIGKILLed driver). So
  Tune keeps every checkpoint (``num_to_keep=None``) and this callback deletes the older ones.
* Telling Optuna a trial's outcome. A driver killed after the tell but before the copy resumes
  that trial and runs it again, and the rerun may end otherwise (ASHA's rungs are restored
  from the older state too): the study then says PRUNED where the tables say COMPLETE (seen in
  CI). The searcher notes outcomes and this callback has them told.

Both happen once the state on storage is byte for byte the driver's latest snapshot and that
snapshot was written after the checkpoint was registered or the outcome noted: from then on no
resume can need the old checkpoint or run the trial again.

A state on storage found whole that way is also kept as the last good copy (``LAST_GOOD``, beside
it), before anything is deleted on its word: a copy cut short later (a full disk) leaves a state
``--resume`` cannot read, and the search resumes from the last good one instead, every checkpoint
it names still there and every trial it has unfinished not yet told to Optuna.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import pyarrow.fs
from ray.tune import Callback

if TYPE_CHECKING:
    from raysearch_adapters.search.searcher import ConstrainedOptunaSearch

CHECK_EVERY_S = 2.0  # how often, at most, the stored state is compared while something waits for it
LAST_GOOD = ".last-good"  # the folder, beside Tune's state files, of the last copy of them found whole
# Tune's state files, written together to the driver's staging folder and copied to storage together
STATE_FILES = ("experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json")
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


def state_files(folder: Path) -> List[Path]:
    """Tune's state files in ``folder`` (``STATE_FILES``), in name order."""
    return sorted(p for pattern in STATE_FILES for p in folder.glob(pattern))


def checkpoint_index(path: str) -> Optional[int]:
    m = _CHECKPOINT_DIR.search(path.rstrip("/"))
    return int(m.group(1)) if m else None


def checkpoint_folder(checkpoint_path: str) -> str:
    """The folder holding ``checkpoint_path`` (a trial's folder, or a Ray Train run's)."""
    return checkpoint_path.rstrip("/").rsplit("/", 1)[0]


def _delete_checkpoints(fs: pyarrow.fs.FileSystem, trial_dir: str, doomed) -> List[str]:
    """Delete the ``checkpoint_N`` folders of ``trial_dir`` for which ``doomed(N)``; return their paths."""
    deleted = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(trial_dir.rstrip("/"), allow_not_found=True)):
        index = checkpoint_index(info.path)
        if info.type == pyarrow.fs.FileType.Directory and index is not None and doomed(index):
            fs.delete_dir(info.path)
            deleted.append(info.path)
    return deleted


def delete_older_checkpoints(fs: pyarrow.fs.FileSystem, checkpoint_path: str) -> List[str]:
    """Delete the ``checkpoint_N`` folders beside ``checkpoint_path`` with a lower N; return their paths.

    Newer ones stay: while the search runs, a newer folder is one the trial is writing or has just reported."""
    newest = checkpoint_index(checkpoint_path)
    if newest is None:
        return []
    return _delete_checkpoints(fs, checkpoint_folder(checkpoint_path), lambda index: index < newest)


def keep_only_checkpoint(fs: pyarrow.fs.FileSystem, trial_dir: str, keep: Optional[str]) -> List[str]:
    """After the search: delete every ``checkpoint_N`` folder of ``trial_dir`` but ``keep`` (None: all of them).

    Once ``fit`` has returned, the stored state names each trial's ``keep`` and nothing else. A newer
    folder is then an orphan: a killed driver's trial wrote it after the last stored state, and the
    resumed trial, rerun from an older checkpoint (or from scratch), ended before its own numbering
    reached that folder again (seen in CI)."""
    kept = checkpoint_index(keep) if keep is not None else None
    return _delete_checkpoints(fs, trial_dir, lambda index: index != kept)


class StoredStateWatcher(Callback):
    """Deletes superseded checkpoints and has the searcher tell noted outcomes once the stored state records them."""

    def __init__(self, searcher: Optional["ConstrainedOptunaSearch"] = None) -> None:
        # The searcher Tune runs: the Tuner pickles both in one file, so a restored run keeps the pair.
        self.searcher = searcher
        # trial id -> checkpoints registered since its last pruning: (path, registration time, filesystem)
        self._pending: Dict[str, List[Tuple[str, float, pyarrow.fs.FileSystem]]] = {}
        self._storage = None
        self._last_check = 0.0
        self._last_good_at: Optional[float] = None

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._storage = trial.storage

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        # Called just before Tune registers the checkpoint: a snapshot written after this moment names it.
        self._pending.setdefault(trial.trial_id, []).append((checkpoint.path, time.time(), checkpoint.filesystem))
        self._storage = trial.storage

    def _waiting(self) -> bool:
        return bool(self._pending) or (self.searcher is not None and self.searcher.has_untold())

    def on_step_end(self, iteration, trials, **info) -> None:
        if self._waiting() and time.monotonic() - self._last_check >= CHECK_EVERY_S:
            self.check()

    def check(self) -> Tuple[List[str], List[str]]:
        """Act on what the stored state records now: the deleted checkpoint folders and the told trials."""
        self._last_check = time.monotonic()
        stored = self._stored_snapshot()
        if stored is None:
            return [], []
        saved_at, name, data = stored
        self._keep_last_good(saved_at, {name: data})
        told = self.searcher.tell_recorded(saved_at) if self.searcher is not None else []
        return self._prune(saved_at), told

    def _keep_last_good(self, saved_at: float, verified: Dict[str, bytes]) -> None:
        """Copy Tune's state files to ``LAST_GOOD`` when every one on storage is its staging copy byte for byte
        (the snapshot of ``saved_at``, copied whole; ``verified``: the files already found so, with their bytes);
        each file is written beside its place and moved there."""
        if saved_at == self._last_good_at:
            return
        fs, base = self._storage.storage_filesystem, self._storage.experiment_fs_path
        staging = Path(self._storage.experiment_driver_staging_path)
        files = {p.name: verified[p.name] if p.name in verified else p.read_bytes() for p in state_files(staging)}
        for name, data in files.items():
            if name in verified:
                continue
            try:
                with fs.open_input_stream(f"{base}/{name}") as f:
                    if f.read() != data:
                        return  # copied since, or being copied: a later check
            except (FileNotFoundError, OSError):
                return
        fs.create_dir(f"{base}/{LAST_GOOD}")
        for name, data in files.items():
            tmp = f"{base}/{LAST_GOOD}/.{name}.tmp"
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, f"{base}/{LAST_GOOD}/{name}")
        self._last_good_at = saved_at

    def _prune(self, saved_at: float) -> List[str]:
        deleted = []
        for trial_id, registered in list(self._pending.items()):
            known = [entry for entry in registered if entry[1] < saved_at]
            if not known:
                continue
            path, _, fs = known[-1]
            deleted += delete_older_checkpoints(fs, path)
            self._pending[trial_id] = registered[len(known):]
        return deleted

    def _stored_snapshot(self) -> Optional[Tuple[float, str, bytes]]:
        """When the driver wrote the snapshot that storage holds now, its file name and bytes, if storage holds
        its latest one."""
        if self._storage is None:
            return None
        snapshots = sorted(Path(self._storage.experiment_driver_staging_path).glob("experiment_state-*.json"),
                           key=lambda p: p.stat().st_mtime)
        if not snapshots:
            return None
        latest = snapshots[-1]
        # File times come from a coarse clock that never runs ahead: a snapshot whose time is after a
        # registration was written after it.
        saved_at = latest.stat().st_mtime
        try:
            with self._storage.storage_filesystem.open_input_stream(
                    f"{self._storage.experiment_fs_path}/{latest.name}") as f:
                stored = f.read()
        except (FileNotFoundError, OSError):  # not copied yet
            return None
        # Unequal while the copy runs or before it starts; the next check sees it done.
        return (saved_at, latest.name, stored) if stored == latest.read_bytes() else None
