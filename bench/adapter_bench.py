"""What the adapter-training benches share: the base model, a manifest subset, placements, adapter steps, timing."""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from raysearch_adapters.adapters.inject import AdapterHandle
from raysearch_adapters.config import DEMO_CONFIG, ConformerConfig, FrontendConfig
from raysearch_adapters.data.batching import duration_batches
from raysearch_adapters.data.manifest import read_manifest, write_manifest
from raysearch_adapters.data.text import normalize_text
from raysearch_adapters.models.ctc import ctc_loss
from raysearch_adapters.train.evaluate import autocast_context

# Adapter placements every benchmark compares: name -> block-set spec for a model of n blocks.
PLACEMENTS = {"bottom": lambda n: "all", "middle": lambda n: f"window:{n // 2}-{n}", "top": lambda n: "top:1"}

Batch = Tuple[torch.Tensor, torch.Tensor, List[str]]


def parser_with_common_options(description: str) -> argparse.ArgumentParser:
    """The options every adapter-training bench takes: model, train manifest, steps, batch, subset, dim, output."""
    from raysearch_adapters.config import load_config

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", help="base model checkpoint (default: the demo model, else random weights)")
    parser.add_argument("--manifest", default=load_config([DEMO_CONFIG]).data.new_train,
                        help="training manifest (default: demo new/train)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per way and placement")
    parser.add_argument("--batch-seconds", type=float, default=30.0, help="audio per training batch")
    parser.add_argument("--utterances", type=int, default=64, help="training utterances used (from the start)")
    parser.add_argument("--dim", type=int, default=32, help="adapter bottleneck width")
    parser.add_argument("--out", help="also write the results here as JSON")
    return parser


def subset_manifest(manifest: str, n: int, out: Path) -> Path:
    """The first ``n`` utterances of ``manifest`` as a manifest at ``out`` (a benchmark needs only a few)."""
    path = Path(manifest).expanduser()
    if not path.is_file():
        raise SystemExit(f"manifest {path} not found; build the demo corpus (raysearch-adapters demo-data) "
                         "or pass a manifest")
    return write_manifest(out, read_manifest(path)[:n])


def load_bench_model(checkpoint: Optional[str], manifests: Sequence[Path]):
    """(base model in eval mode, a note on what it is): ``checkpoint``, else the demo model, else random weights.

    Without a trained model timings still hold: a randomly initialised default-size
    Conformer has the same shapes; a character tokenizer over the corpus, padded to the
    default vocabulary size, gives it the default head."""
    from raysearch_adapters.models.conformer import ConformerCTC
    from raysearch_adapters.models.conformer import DEMO_MODEL, resolve_checkpoint
    from raysearch_adapters.models.conformer import load_checkpoint_model
    from raysearch_adapters.models.tokenizer import CharTokenizer

    if checkpoint or DEMO_MODEL.is_file():
        path = resolve_checkpoint(checkpoint or "demo")
        return load_checkpoint_model(path), f"base model: {path}"
    cfg = ConformerConfig()
    chars = sorted({c for m in manifests for u in read_manifest(m) for c in normalize_text(u.text)} - {" "})
    labels = chars + [" "] + [f"<unused{i}>" for i in range(cfg.vocab_size - len(chars) - 1)]
    model = ConformerCTC(cfg, FrontendConfig(), CharTokenizer(labels, space=" ")).eval()
    return model, ("base model: randomly initialised default-size Conformer (no demo model; pass --checkpoint "
                   "PATH for a trained one); timings are valid, WERs are not")


def train_batches(durations: Sequence[float], batch_seconds: float, steps: int) -> List[List[int]]:
    """The index batches of ``steps`` training steps (the train loop's order: shuffled by duration, seed 0)."""
    epochs = (duration_batches(durations, batch_seconds, shuffle=True, seed=0, epoch=e) for e in itertools.count())
    return list(itertools.islice(itertools.chain.from_iterable(epochs), steps))


def adapter_step(model, handle: AdapterHandle, optimizer: torch.optim.Optimizer, batch: Batch,
                 device: torch.device) -> None:
    """One step of the train loop: forward, CTC + L2 loss, backward, gradient clipping, AdamW."""
    inputs, lengths, texts = batch
    with autocast_context(device, "auto"):
        log_probs, out_lengths = model(inputs.to(device), lengths.to(device))
    loss = ctc_loss(log_probs, out_lengths, model.tokenizer, texts) + handle.aux_loss()
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(handle.parameters()), 1.0)
    optimizer.step()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()`` (waiting for the GPU to finish)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def seconds_per_step(step: Callable[[List[int]], None], handle: AdapterHandle, batches: List[List[int]],
                     device: torch.device) -> float:
    """Mean seconds of ``step(batch)`` over ``batches``, after one untimed warm-up step.

    The adapters start from the same weights for every caller and end with them again,
    so each way of training is timed from the same state."""
    initial = [p.detach().clone() for p in handle.parameters()]
    step(batches[0])
    seconds = timed(lambda: [step(b) for b in batches], device)
    with torch.no_grad():
        for p, v in zip(handle.parameters(), initial):
            p.copy_(v)
    return seconds / len(batches)
