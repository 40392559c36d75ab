"""Shared fixtures: one local Ray instance per pytest session, isolated from any cluster."""

from __future__ import annotations

import os

import pytest

# Never attach to someone's cluster; keep Ray quiet and fast in tests.
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by the whole session (with the dashboard: the
    placement-group cleaner that frees stopped Train trials needs the State API)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                 log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """The small demo corpus (real TTS audio), built once per test session."""
    from raysearch_adapters.data.demo import build_demo_corpus

    return build_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", small=True, seed=0)


@pytest.fixture(scope="session")
def search_data(small_demo, tmp_path_factory):
    """(demo corpus folder, tiny checkpoint path, feature cache folder), built once per session."""
    from raysearch_adapters.models.checkpoint import save_checkpoint
    from raysearch_adapters.testing import tiny_conformer

    root = tmp_path_factory.mktemp("search_data")
    checkpoint = root / "tiny.pt"
    save_checkpoint(checkpoint, tiny_conformer(seed=0, num_layers=2))
    return small_demo, checkpoint, root / "features"

