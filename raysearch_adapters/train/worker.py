"""The Ray Train ``train_loop_per_worker`` of one trial: the only Ray Train call site.

Each worker loads the frozen base model and the cached feature sets (the driver computed
them once per search: no worker decodes audio), injects the trial's adapters and runs the
plain-PyTorch :func:`~raysearch_adapters.train.loop.train_adapters`. With several workers
the adapter gradients are averaged and the dev error counts summed over ranks, so rank 0's
report (the only one Ray Tune sees) carries the WER of the whole dev sets. Rank 0 also
writes the adapter-only checkpoint of every evaluation; a restarted trial continues from it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.adapters.state import base_fingerprint, load_adapter, save_adapter
from raysearch_adapters.config import Config, from_dict, to_dict
from raysearch_adapters.models.registry import load_base_model
from raysearch_adapters.train.evaluate import load_feature_set
from raysearch_adapters.train.hparams import trial_adapter_config
from raysearch_adapters.train.loop import train_adapters
from raysearch_adapters.train.objective import degradation_limit, is_feasible

ADAPTER_FILE = "adapter.pt"  # adapter weights + config (adapters.state format) in every checkpoint
STATE_FILE = "train_state.pt"  # optimizer state, step and evaluation index, to resume the trial


def trial_loop_config(cfg: Config, hp: dict, base_original_wer: float) -> dict:
    """The ``train_loop_config`` of a trial. The test manifests are blanked: a trial cannot touch them."""
    no_test = replace(cfg, data=replace(cfg.data, new_test="", original_test=""))
    fraction = cfg.resources.gpu_memory_fraction or min(cfg.resources.gpus_per_worker, 1.0)
    return {"cfg": to_dict(no_test), "hp": dict(hp), "base_original_wer": float(base_original_wer),
            "gpu_memory_fraction": fraction if cfg.resources.use_gpu else 0.0}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return str(device)


def train_loop_per_worker(config: dict) -> None:
    """Train one trial's adapters on this worker (see :func:`trial_loop_config` for ``config``)."""
    cfg = from_dict(config["cfg"])
    hp = config["hp"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda" and config["gpu_memory_fraction"] < 1.0:
        # Ray shares the GPU between trials but does not police its memory: cap this process.
        torch.cuda.set_per_process_memory_fraction(config["gpu_memory_fraction"], device)
    torch.manual_seed(cfg.train.seed)
    model = load_base_model(cfg.model)
    fingerprint = base_fingerprint(model)
    train_set = load_feature_set(cfg.data, model, cfg.data.new_train, progress=False)
    dev_sets = {"new": load_feature_set(cfg.data, model, cfg.data.new_dev, progress=False),
                "original": load_feature_set(cfg.data, model, cfg.data.original_dev, progress=False)}
    adapter_cfg = trial_adapter_config(hp, cfg.adapter)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            handle, _, _ = load_adapter(Path(d) / ADAPTER_FILE, model)
            resume = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    else:
        handle = inject_adapters(model, adapter_cfg)
    model.to(device)
    static = {"adapter_params": handle.num_params, "adapter_percent": handle.percent_of_base,
              "device": _device_name(device), "node_id": ray.get_runtime_context().get_node_id()}
    limit = degradation_limit(cfg.search.kappa, cfg.search.kappa_mode)

    def report(metrics: dict, state: dict) -> None:
        metrics = {**metrics, **static, "feasible": is_feasible(metrics["degradation"], limit)}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            save_adapter(os.path.join(d, ADAPTER_FILE), handle, adapter_cfg, fingerprint,
                         extra={"hp": dict(hp), "metrics": metrics})
            torch.save(state, os.path.join(d, STATE_FILE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    train_adapters(model, handle, train_set, dev_sets, hp, cfg.train, config["base_original_wer"], report,
                   kappa_mode=cfg.search.kappa_mode, eval_batch_seconds=cfg.data.max_batch_seconds,
                   specaugment_cfg=cfg.data.specaugment, resume=resume, rank=rank, world_size=world_size,
                   all_reduce=torch.distributed.all_reduce if world_size > 1 else None)
