"""Atomic file writes: nothing a reader sees is ever half-written, nothing already there is lost."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


ORPHAN_AFTER_S = 3600.0  # a temporary file of atomic_write unchanged this long was left by a killed writer


def _remove_orphans(path: Path) -> None:
    """Delete the temporary files of earlier writes of ``path`` that a killed process left (SIGKILL, a lost
    machine: no ``except`` ran); a write still going on keeps changing its file and is left alone."""
    cutoff = time.time() - ORPHAN_AFTER_S
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:  # gone meanwhile, or not ours to delete
            pass


def atomic_write(path: os.PathLike | str, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then move it into place in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600; give the file the permissions a plain open() would (shared storage).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: os.PathLike | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_folder(folder: os.PathLike | str, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary folder beside ``folder``, then put it in place of ``folder`` (replacing an
    older one): a reader never sees half of it."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp creates 0700; others may read an export (shared storage)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
