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
def real_copy(demo_model_search, tmp_path) -> Path:
    """A private copy of the result files of a real search whose winner fixes and breaks utterances."""
    _, _, out = demo_model_search
    return Path(shutil.copytree(out, tmp_path / out.name, ignore=shutil.ignore_patterns("tune")))


@pytest.fixture
def serve():
    """``serve(results_dir[, host])`` -> a running :class:`Served`; all are stopped after the test."""
    started = []

    def start(results_dir: Path, host: str = "127.0.0.1") -> Served:
        started.append(Served(results_dir, host))
        return started[-1]

    yield start
    for s in started:
        s.close()
