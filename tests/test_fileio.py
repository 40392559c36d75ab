"""Atomic writes: the temporary file a killed writer left beside a file goes with the next write of that file."""

from __future__ import annotations

import os
import time

import pytest

from raysearch_adapters.fileio import ORPHAN_AFTER_S, atomic_folder, atomic_write_text


def test_the_next_write_removes_temporary_files_a_killed_writer_left_and_only_those(tmp_path):
    target = tmp_path / "new.json.features"
    orphan = tmp_path / ".new.json.features.k3j2_x.tmp"  # what a SIGKILLed atomic_write of it leaves
    orphan.write_bytes(b"half a cache")
    old = time.time() - ORPHAN_AFTER_S - 60
    os.utime(orphan, (old, old))
    busy = tmp_path / ".new.json.features.p0q9zz.tmp"  # another process writing it right now
    busy.write_bytes(b"being written")
    other = tmp_path / ".other.json.a1b2c3.tmp"  # an orphan of another file: its own next write removes it
    other.write_bytes(b"x")
    os.utime(other, (old, old))

    atomic_write_text(target, "done")
    assert target.read_text() == "done"
    assert not orphan.exists() and busy.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, busy.name, other.name])


def test_a_folder_is_written_beside_and_put_in_place_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "export" / "model"
    atomic_folder(folder, lambda tmp: (tmp / "old.txt").write_text("old"))
    assert atomic_folder(folder, lambda tmp: (tmp / "a.txt").write_text("a")) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]  # the older folder replaced, not merged into

    def fails(tmp):
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("converter failed")

    with pytest.raises(RuntimeError, match="converter failed"):
        atomic_folder(folder, fails)
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]  # no temporary folder left
