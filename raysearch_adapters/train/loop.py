"""Adapter training and dev evaluation of one trial: plain PyTorch, no Ray.

Only the adapter parameters train (AdamW, linear warm-up then cosine decay, gradient
clipping, bf16 autocast on GPU), on CTC loss plus the adapters' L2 term. Every
``eval_every`` steps both dev sets are decoded (greedy CTC) and ``report`` gets the
metrics; the worker turns that into a Ray Train report and an adapter checkpoint.

Several ranks (DDP) are supported through one callable, ``all_reduce`` (an in-place sum
over ranks, e.g. ``torch.distributed.all_reduce``): it averages the adapter gradients and
sums the error counts of each rank's shard of the dev sets, so every rank sees the same WER.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, Iterator, List, Optional

import torch

from raysearch_adapters.adapters.inject import AdapterHandle
from raysearch_adapters.config import SpecAugmentConfig, TrainConfig
from raysearch_adapters.data.batching import duration_batches
from raysearch_adapters.data.cache import FeatureSet
from raysearch_adapters.data.features import SpecAugment
from raysearch_adapters.models.base import Backbone
from raysearch_adapters.train.evaluate import autocast_context, evaluate
from raysearch_adapters.train.objective import degradation
from raysearch_adapters.train.pretrain import ctc_loss, warmup_cosine

AllReduce = Callable[[torch.Tensor], object]  # sums a tensor over ranks, in place
Report = Callable[[dict, dict], None]  # (metrics, train state to checkpoint beside the adapter weights)


class AdapterNoOpError(RuntimeError):
    """The adapters do not change the model's output: they are not in the forward path."""


def num_evals(steps: int, eval_every: int) -> int:
    """Dev evaluations of a trial of ``steps`` steps (one every ``eval_every``, and one at the end)."""
    return math.ceil(steps / eval_every)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def dev_wer(model: Backbone, feature_set: FeatureSet, batch_seconds: float, precision: str = "auto",
            rank: int = 0, world_size: int = 1, all_reduce: Optional[AllReduce] = None) -> float:
    """Dev WER (percent) of the whole ``feature_set``: each rank decodes its share, error counts are summed."""
    result = evaluate(model, feature_set, range(rank, len(feature_set), world_size), batch_seconds,
                      _device_of(model), precision)
    counts = torch.tensor([result["errors"], result["words"]], dtype=torch.float64, device=_device_of(model))
    if all_reduce is not None:
        all_reduce(counts)
    return float(100.0 * counts[0] / counts[1].clamp(min=1))


@torch.no_grad()
def check_in_forward_path(model: Backbone, handle: AdapterHandle, inputs: torch.Tensor,
                          lengths: torch.Tensor) -> None:
    """Raise :class:`AdapterNoOpError` unless disabling the adapters changes the output on this batch.

    A silently skipped adapter shows zero degradation and would look like the perfect
    feasible trial (NeMo#14848), so a trial whose adapters do nothing must fail."""
    device = _device_of(model)
    inputs, lengths = inputs.to(device), lengths.to(device)
    with_adapters = model(inputs, lengths)[0]
    handle.disable()
    try:
        without = model(inputs, lengths)[0]
    finally:
        handle.enable()
    if torch.equal(with_adapters, without):
        raise AdapterNoOpError(_no_op_message(handle, "do not change the model's output"))


def _no_op_message(handle: AdapterHandle, what: str) -> str:
    where = ", ".join(handle.targeted[:4]) + (" ..." if len(handle.targeted) > 4 else "")
    return (f"the adapters at {where} {what}: they are not in the forward path; this trial's WERs would be "
            "the base model's, so it fails instead of reporting them")


def _train_batches(train_set: FeatureSet, max_seconds: float, seed: int, rank: int,
                   world_size: int) -> Iterator[List[int]]:
    """Endless index batches, reshuffled each epoch; every rank gets the same number per epoch (DDP lockstep)."""
    epoch = 0
    while True:
        batches = duration_batches(train_set.durations, max_seconds, shuffle=True, seed=seed, epoch=epoch)
        for k in range(max(1, len(batches) // world_size)):
            yield batches[(k * world_size + rank) % len(batches)]
        epoch += 1


def train_adapters(model: Backbone, handle: AdapterHandle, train_set: FeatureSet, dev_sets: Dict[str, FeatureSet],
                   hp: dict, train_cfg: TrainConfig, base_original_wer: float, report: Report, *,
                   kappa_mode: str = "absolute", eval_batch_seconds: float = 120.0,
                   specaugment_cfg: SpecAugmentConfig = SpecAugmentConfig(), resume: Optional[dict] = None,
                   rank: int = 0, world_size: int = 1, all_reduce: Optional[AllReduce] = None) -> dict:
    """Train ``handle``'s adapters on ``train_set`` for ``hp['steps']`` steps; evaluate and ``report`` as it goes.

    ``dev_sets`` holds the ``new`` and ``original`` dev feature sets. ``hp`` gives ``lr``,
    ``weight_decay``, ``steps`` and ``specaugment``. ``resume`` is a train state passed to an
    earlier ``report`` (optimizer, step, eval index, metrics); the adapter weights must already
    be loaded. Returns the metrics of the last evaluation."""
    device = _device_of(model)
    steps, lr = int(hp["steps"]), float(hp["lr"])
    warmup = int(train_cfg.warmup_ratio * steps)  # linear warm-up, then cosine decay to 0 at the last step
    params = list(handle.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=float(hp["weight_decay"]))
    specaugment = SpecAugment(specaugment_cfg) if hp["specaugment"] else None
    step, eval_index = 0, 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        step, eval_index = int(resume["step"]), int(resume["eval_index"])
    torch.manual_seed(train_cfg.seed + step)
    batches = _train_batches(train_set, train_cfg.max_batch_seconds, train_cfg.seed, rank, world_size)
    for _ in range(step):  # the same batch order as an uninterrupted run
        next(batches)
    if step >= steps:  # the run had finished when its trial was interrupted: report its result again
        report(resume["metrics"], resume)
        return resume["metrics"]
    probe = dev_sets["new"].collate(range(min(2, len(dev_sets["new"]))))[:2]
    start = time.monotonic()
    losses: List[float] = []
    metrics: dict = {}
    handle.train()
    while step < steps:
        inputs, lengths, texts = train_set.collate(next(batches))
        if specaugment is not None:
            inputs = specaugment.train()(inputs)
        current_lr = lr * warmup_cosine(step, warmup, (step - warmup) / max(steps - warmup, 1), floor=0.0)
        for group in optimizer.param_groups:
            group["lr"] = current_lr
        with autocast_context(device, train_cfg.precision):
            log_probs, out_lengths = model(inputs.to(device), lengths.to(device))
        loss = ctc_loss(log_probs, out_lengths, model.tokenizer, texts) + handle.aux_loss()
        if not loss.requires_grad:
            raise AdapterNoOpError(_no_op_message(handle, "receive no gradient"))
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        if all_reduce is not None:
            for p in params:
                if p.grad is None:  # a branch skipped by stochastic depth on this rank only
                    p.grad = torch.zeros_like(p)
                all_reduce(p.grad)
                p.grad /= world_size
        if train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % train_cfg.eval_every == 0 or step == steps:
            eval_index += 1
            handle.eval()
            check_in_forward_path(model, handle, *probe)
            wers = {domain: dev_wer(model, dev_sets[domain], eval_batch_seconds, train_cfg.precision, rank,
                                    world_size, all_reduce) for domain in ("new", "original")}
            handle.train()
            loss_sum = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=device)
            if all_reduce is not None:
                all_reduce(loss_sum)  # the mean over every rank's batches
            metrics = {"step": step, "eval_index": eval_index, "final": step == steps,
                       "train_loss": float(loss_sum[0] / loss_sum[1].clamp(min=1)), "lr": current_lr,
                       "dev_wer_new": wers["new"], "dev_wer_original": wers["original"],
                       "degradation": degradation(wers["original"], base_original_wer, kappa_mode),
                       "time_s": time.monotonic() - start}
            losses = []
            report(metrics, {"optimizer": optimizer.state_dict(), "step": step, "eval_index": eval_index,
                             "metrics": metrics})
    handle.eval()
    return metrics
