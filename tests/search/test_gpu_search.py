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


BF16_WER_TOLERANCE = 1.0  # WER points: bf16 measurement against fp32 of the same adapters (the demo model)


def test_a_bf16_trial_on_the_gpu_measures_the_wer_the_cpus_fp32_path_measures(ray_session, search_data, tmp_path):
    """The demo model trained on the GPU in bf16 (precision=auto there); its winner's dev WERs, measured in the
    trial in bf16 on CUDA, against the same adapter file measured again on the CPU in fp32 (``evaluate`` on the
    path the trial measured from)."""
    from builders import demo_model_search_overrides
    from raysearch_adapters.adapters.state import load_adapter
    from raysearch_adapters.data.cache import load_feature_set
    from raysearch_adapters.models.registry import load_base_model
    from raysearch_adapters.train.evaluate import evaluate
    from raysearch_adapters.train.prefix import inputs_from, measurement_block, view_from

    corpus, _, cache = search_data
    cfg = load_config([], demo_model_search_overrides(corpus, cache, tmp_path, "bf16", "resources.use_gpu=true",
                                                      "resources.gpus_per_worker=0.5", "train.precision=auto"))
    summary = run.run_search(cfg)
    winner = summary["winner"]
    rows = read_rows(tmp_path / "bf16" / "trials.parquet", TRIALS_SCHEMA)
    assert rows and all(r["device"].startswith("cuda") for r in rows)  # precision=auto on CUDA: bf16 (test_gpu.py)
    model = load_base_model(cfg.model)
    handle, _, _ = load_adapter(tmp_path / "bf16" / "best_adapter.pt", model)
    k = measurement_block(handle, cfg.train.prefix_cache, False)
    for s in cfg.measured_sets():
        inputs = inputs_from(load_feature_set(cfg.data, model, s.dev, progress=False), model, k, cfg.data.cache_dir)
        fp32 = evaluate(view_from(model, k), inputs, max_batch_seconds=cfg.data.max_batch_seconds, device="cpu",
                        precision="fp32")
        assert abs(winner["dev"][s.name] - fp32["wer"]) <= BF16_WER_TOLERANCE, (s.name, winner["dev"], fp32["wer"])
