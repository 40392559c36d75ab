"""--resume of a folder that was moved or copied is refused naming where the search started; a finished search
resumed says so and changes nothing."""

from __future__ import annotations

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


def test_a_tune_state_cut_short_is_refused_with_one_line_naming_the_file(ray_session, search_data, tmp_path, capsys):
    """The disk filled up while Tune copied its state to the results folder: --resume says which file is cut short
    and what to do, instead of a JSONDecodeError traceback (after which every later try started the trials again)."""
    overrides = tiny_search_overrides(*search_data, tmp_path, "cut", *KILL_OVERRIDES)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "raysearch_adapters", "search", *overrides], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    out = tmp_path / "cut"
    _wait(lambda: _finished(out) >= 1, driver)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=120)
    (state,) = (out / "tune").glob("experiment_state-*.json")
    text = state.read_text()
    state.write_text(text[: len(text) // 2])
    tables = (out / "trials.parquet").read_bytes()
    assert main(["search", *overrides, "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (f"error: --resume: Ray Tune's saved state {state} is unreadable (" in err
            and "this search cannot be resumed: start it again with another search.name" in err)
    assert (out / "trials.parquet").read_bytes() == tables
