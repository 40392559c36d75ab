"""Fixtures: a finished search's results folder, private copies to break, the dashboard served."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dash_helpers import SEARCH, Served, write_results


@pytest.fixture(scope="session")
def finished_dir(tmp_path_factory) -> Path:
    """A finished search's results folder (shared: tests must not modify it)."""
    return write_results(tmp_path_factory.mktemp("results") / SEARCH)


@pytest.fixture
def results_copy(finished_dir, tmp_path) -> Path:
    """A private copy of the finished folder, for tests that break or remove files."""
    return Path(shutil.copytree(finished_dir, tmp_path / SEARCH))


@pytest.fixture
def serve():
    """``serve(results_dir)`` -> a running :class:`Served`; all are stopped after the test."""
    started = []

    def start(results_dir: Path) -> Served:
        started.append(Served(results_dir))
        return started[-1]

    yield start
    for s in started:
        s.close()
