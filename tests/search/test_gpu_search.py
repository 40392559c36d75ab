"""On a CUDA GPU (``-m gpu``): four trials share one GPU at once (``resources.gpus_per_worker=0.25``), each on
CUDA. Skipped without one; ``bench/gpu_check.sh`` runs it on the GPU machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from builders import tiny_search_overrides
from raysearch_adapters.config import load_config
from raysearch_adapters.results import TRIALS_SCHEMA, read_rows
from raysearch_adapters.search import run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_four_trials_share_one_gpu_at_once(ray_session, search_data, tmp_path):
    overrides = tiny_search_overrides(*search_data, tmp_path, "gpu", "search.kappa=1000", "resources.use_gpu=true",
                                      "resources.gpus_per_worker=0.25", "resources.cpus_per_worker=0.5",
                                      "resources.max_concurrent_trials=0", "search.asha.enabled=false",
                                      "train.steps=300", "train.eval_every=100")
    summary = run.run_search(load_config([], overrides))
    rows = read_rows(tmp_path / "gpu" / "trials.parquet", TRIALS_SCHEMA)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"COMPLETE"}
    assert all(r["device"].startswith("cuda") for r in rows), [r["device"] for r in rows]
    # each trial's span, from Ray Tune's own record: all four were training at one moment
    spans = []
    for r in rows:
        (path,) = Path(summary["paths"]["tune_storage"]).glob(f"*/*_{r['trial_id']}_*/result.json")
        results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        spans.append((results[0]["timestamp"] - results[0]["time_this_iter_s"], results[-1]["timestamp"]))
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
