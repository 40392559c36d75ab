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
        from raysearch_adapters.search.run import start_local_ray

        start_local_ray(num_cpus=2, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """The small demo corpus (real TTS audio), built once per test session; where $RAYSEARCH_ADAPTERS_SMALL_DEMO
    names a copy built before (the GPU machine has no TTS: bench/gpu_check.sh carries one), that copy."""
    from raysearch_adapters.data.demo import build_demo_corpus

    carried = os.environ.get("RAYSEARCH_ADAPTERS_SMALL_DEMO")
    return build_demo_corpus(carried or tmp_path_factory.mktemp("demo") / "corpus", small=True, seed=0)


@pytest.fixture(scope="session")
def search_data(small_demo, tmp_path_factory):
    """(demo corpus folder, tiny checkpoint path, feature cache folder), built once per session."""
    from raysearch_adapters.models.checkpoint import save_checkpoint
    from builders import tiny_conformer

    root = tmp_path_factory.mktemp("search_data")
    checkpoint = root / "tiny.pt"
    save_checkpoint(checkpoint, tiny_conformer(seed=0, num_layers=2))
    return small_demo, checkpoint, root / "features"


@pytest.fixture(scope="session")
def tiny_nemo(small_demo, tmp_path_factory):
    """``tiny_nemo(kind)``: a tiny .nemo file of ``kind`` (ctc | rnnt | tdt | hybrid: 2 Conformer layers,
    d_model 32, a 128-piece SentencePiece tokenizer of the small demo corpus's transcripts), built on first use
    and kept for the session."""
    from raysearch_adapters.data.manifest import read_manifest
    from raysearch_adapters.data.text import normalize_text
    from raysearch_adapters.models.nemo_build import build_nemo_file

    root = tmp_path_factory.mktemp("nemo")
    texts = [normalize_text(u.text) for m in sorted(small_demo.glob("*/*.json"))
             for u in read_manifest(m, check_audio=False)]
    built = {}

    def get(kind: str):
        if kind not in built:
            built[kind] = build_nemo_file(kind, texts, root / f"tiny_{kind}.nemo")
        return built[kind]

    return get


@pytest.fixture(scope="session")
def demo_model_search(ray_session, small_demo, tmp_path_factory):
    """(config, summary, results folder) of one real search whose winner fixes and breaks utterances
    (:func:`builders.demo_model_search_overrides`), run once per test session."""
    from raysearch_adapters.config import load_config
    from raysearch_adapters.search import run
    from builders import demo_model_search_overrides

    root = tmp_path_factory.mktemp("demo_model_search")
    cfg = load_config([], demo_model_search_overrides(small_demo, root / "features", root, "fixed-broken"))
    return cfg, run.run_search(cfg), root / "fixed-broken"
