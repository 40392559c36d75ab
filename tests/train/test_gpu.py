"""On a CUDA GPU (``-m gpu``): ``precision=auto`` is bf16 autocast there, its outputs and a training step's loss
match the CPU's fp32 within bf16 rounding, every adapter parameter gets a gradient on the GPU, and a trial's
memory cap (``resources.gpu_memory_fraction``) refuses an allocation past it. Skipped without
one; ``bench/gpu_check.sh`` runs them on the GPU machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raysearch_adapters.models.base import BackboneView
from raysearch_adapters.train.evaluate import model_outputs
from raysearch_adapters.train.loop import TrainSets, step_loss
from builders import with_random_adapters
from test_precision import ADAPTERS, BF16_TOLERANCE, DtypeHooks, _max_diff

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("cfg", ADAPTERS, ids=lambda c: c.type)
def test_auto_precision_on_cuda_is_bf16_and_its_outputs_match_the_cpus_fp32(model, feature_sets, cfg):
    fs = feature_sets["original"]
    with_random_adapters(model, cfg)
    hooks = DtypeHooks(model)
    cpu = model_outputs(model, fs, max_batch_seconds=1.0, device="cpu", precision="auto")
    assert {o for _, _, o in hooks.take()} == {torch.float32}  # auto on the CPU: fp32
    model.to("cuda")
    gpu = model_outputs(model, fs, max_batch_seconds=1.0, device="cuda", precision="auto")
    assert {o for _, _, o in hooks.take()} == {torch.bfloat16}  # auto on a GPU: bf16
    hooks.remove()
    assert all(o.device.type == "cpu" and o.dtype == torch.float32 for o in gpu)  # handed back like the CPU's
    assert 0 < _max_diff(gpu, cpu) < BF16_TOLERANCE


@pytest.mark.parametrize("cfg", ADAPTERS, ids=lambda c: c.type)
def test_a_training_step_on_cuda_reaches_every_adapter_and_matches_the_cpus_loss(model, feature_sets, cfg):
    handle = with_random_adapters(model, cfg)
    handle.eval()  # no dropout: both devices see the same model
    sets = TrainSets(feature_sets["train"])
    batch = ([0, 1, 2], [], [])
    cpu, _ = step_loss(BackboneView(model, None), handle, sets, batch, 0.0, torch.device("cpu"), "auto")
    model.to("cuda")
    for p in handle.parameters():
        p.grad = None
    gpu, _ = step_loss(BackboneView(model, None), handle, sets, batch, 0.0, torch.device("cuda"), "auto")
    gpu.backward()
    assert gpu.device.type == "cuda"
    assert abs(float(gpu) - float(cpu)) < 0.01 * abs(float(cpu))
    assert all(p.grad is not None and p.grad.device.type == "cuda" and p.grad.abs().sum() > 0
               for p in handle.parameters())


def test_the_memory_cap_holds_in_the_trial_process():
    # in a process of its own: the cap is the whole process's
    code = """
import torch
from raysearch_adapters.train.worker import cap_gpu_memory
device = torch.device("cuda:0")
total = torch.cuda.get_device_properties(device).total_memory
cap_gpu_memory(device, 0.25)
small = torch.empty(int(0.2 * total) // 4, dtype=torch.float32, device=device)  # within the cap
try:
    torch.empty(int(0.1 * total) // 4, dtype=torch.float32, device=device)  # 0.3 of the GPU in all: past it
except torch.OutOfMemoryError:
    print("refused")
else:
    print("allowed")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refused"]
