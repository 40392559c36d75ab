"""--resume of a folder that was moved or copied is refused naming where the search started; a finished search
resumed says so and changes nothing; a Tune state cut short resumes from its last whole copy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from builders import tiny_search_overrides
from raysearch_adapters.commands.main import main
from raysearch_adapters.config import load_config
from raysearch_adapters.search import run
from raysearch_adapters.search.stored_state import LAST_GOOD
from test_search_e2e import KILL_OVERRIDES, _finished, _wait, assert_study_equals_tables


def _given(overrides: list, root: Path) -> list:
    return [o for o in overrides if not o.startswith("results.dir=")] + [f"results.dir={root}"]


def test_a_killed_search_moved_to_another_folder_is_refused_naming_where_it_was_and_resumes_there(
        ray_session, search_data, tmp_path, capsys):
    """Ray Tune's stored state names the folder a search started in (new trials of a resumed run are made there):
    resumed from where it was moved, the search is refused before anything is written, naming results.dir and where
    it was; moved back, it resumes."""
    overrides = tiny_search_overrides(*search_data, tmp_path / "before", "moved", *KILL_OVERRIDES)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "raysearch_adapters", "search", *overrides], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    old = tmp_path / "before" / "moved"
    _wait(lambda: _finished(old) >= 1, driver)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=120)
    (tmp_path / "after").mkdir()
    out = tmp_path / "after" / "moved"
    shutil.move(str(old), str(out))
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    assert main(["search", *_given(overrides, tmp_path / "after"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert (f"error: --resume: results.dir: the search in {out} was started in {old}, and Ray Tune's state in it "
            f"names that folder; a search resumes only where it started: move the folder back to {old} and resume "
            f"it there (results.dir={old.parent})") in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files and not old.exists()

    shutil.move(str(out), str(old))  # a copy left where it was is the one to resume
    shutil.copytree(old, out)
    assert main(["search", *_given(overrides, tmp_path / "after"), "--resume"]) == 2
    assert f"was started in {old}, and Ray Tune's state in it names that folder; a search resumes only where it " \
           "started: it is still there: resume that one" in capsys.readouterr().err
    summary = run.run_search(run.resumed_config(load_config([], overrides), [], overrides), resume=True)
    assert not summary["interrupted"] and summary["paths"]["results_dir"] == str(old)
    rows = assert_study_equals_tables(old, "moved", 1000.0)
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"COMPLETE", "PRUNED"}
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files  # the copy was not written


def test_resuming_a_finished_search_says_so_and_changes_nothing(ray_session, search_data, tmp_path, capsys):
    overrides = tiny_search_overrides(*search_data, tmp_path, "done", "search.kappa=1000", "search.num_trials=2")
    run.run_search(load_config([], overrides))
    out = tmp_path / "done"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.glob("*")) if p.is_file()}
    capsys.readouterr()
    assert main(["search", *overrides, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"the search in {out} has finished; nothing to resume")
    assert "winner (trial " in printed  # its summary, as the search printed it
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.glob("*")) if p.is_file()} == before


def test_a_tune_state_cut_short_resumes_from_its_last_whole_copy(ray_session, search_data, tmp_path, capsys):
    """The disk filled up while Tune copied its state to the results folder: --resume goes back to the last copy of
    it found whole (kept beside it as the search ran) and finishes with every trial once; without such a copy it
    is one line naming the file, not a JSONDecodeError traceback (after which every later try started the trials
    again)."""
    overrides = tiny_search_overrides(*search_data, tmp_path, "cut", *KILL_OVERRIDES)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "raysearch_adapters", "search", *overrides], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    out = tmp_path / "cut"
    _wait(lambda: _finished(out) >= 1 and (out / "tune" / LAST_GOOD).is_dir(), driver)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=120)
    good = out / "tune" / LAST_GOOD
    assert sorted(p.name.split("-")[0] for p in good.iterdir()) == ["experiment_state", "search_gen_state",
                                                                    "searcher"]
    (state,) = (out / "tune").glob("experiment_state-*.json")
    text = state.read_text()
    state.write_text(text[: len(text) // 2])
    tables = (out / "trials.parquet").read_bytes()

    good.rename(out / "kept")  # no whole copy: refused, nothing written
    assert main(["search", *overrides, "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (f"error: --resume: Ray Tune's saved state {state} is unreadable (" in err
            and "no whole copy of it was kept; this search cannot be resumed" in err)
    assert (out / "trials.parquet").read_bytes() == tables

    (out / "kept").rename(good)
    assert main(["search", *overrides, "--resume"]) == 0
    assert f"Ray Tune's saved state {state} is unreadable (" in capsys.readouterr().out
    rows = assert_study_equals_tables(out, "cut", 1000.0)
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"COMPLETE", "PRUNED"}
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["interrupted"] and summary["winner"] is not None
