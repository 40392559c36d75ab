"""The frozen-prefix cache: blocks below a trial's lowest adapted block run once per utterance, not per step.

Adapters in blocks >= k leave blocks [0, k) untouched, and the base always runs in eval
mode (:meth:`AdapterHandle.train`), so those blocks are a fixed function of the cached
inputs. :func:`load_prefix_set` stores their outputs (``encode_prefix``) as a feature-cache
file, memory-mapped and shared by every trial on a node whose lowest adapted block is >= k;
:class:`TopOfModel` runs blocks [k, n) and the head on it, and stands in for the model in
``train_adapters`` and ``evaluate``.

The distillation teacher's outputs (:func:`load_teacher_set`) are cached the same way: the
base model's outputs once per utterance, shared by every trial.

This lives in ``train`` (not ``data`` or ``models``): it needs the adapters (the wrappers
to find adapted blocks, the base fingerprint for the key), which those layers never import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from raysearch_adapters.adapters.layers import wrapped
from raysearch_adapters.adapters.state import base_fingerprint
from raysearch_adapters.data.cache import CACHE_VERSION, FeatureSet, Row, eval_mode, open_or_build
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.base import Backbone, BackboneView


def _check_k(model: Backbone, k: int) -> None:
    n = len(model.adaptable_blocks())
    if not 0 <= k <= n:
        raise UserError(f"frozen-prefix cache: got k={k}; allowed: 0..{n} ({model.name} has {n} blocks)")


def prefix_key(feature_set: FeatureSet, model: Backbone, k: int) -> str:
    """sha256 of the input feature set's key, the whole base model's fingerprint, k and the cache layout.

    The fingerprint ignores adapters, so a model with adapters injected has the same key."""
    payload = {"features": feature_set.key, "base": base_fingerprint(model), "k": k, "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def _adapters_bypassed(model: nn.Module) -> Iterator[None]:
    """Every injected adapter off (the exact base model), then each one's own state back."""
    wrappers = list(wrapped(model).values())
    states = [w.enabled for w in wrappers]
    for w in wrappers:
        w.enabled = False
    try:
        yield
    finally:
        for w, state in zip(wrappers, states):
            w.enabled = state


# Utterances per pass when a backbone's outputs do not depend on batch-mates (``Backbone.fixed_input_shape``). The
# teacher (a greedy decode and a teacher-forced pass of a few dozen tokens) gains from it everywhere. The encoder
# does on a GPU, not on 2 CPU cores: Whisper tiny.en's encoder built its cache ~15 % slower per utterance at 8
# than at 1 there (4.3-5.0 against 5.2-5.9 utterances/s; each utterance is already 1,500 frames of GEMMs, and 8
# utterances' attention scores, 8 x heads x 1500^2 floats, leave the caches), so on a CPU it goes one at a time.
CACHE_BATCH = 8
CPU_ENCODER_BATCH = 1


def _cache_batch(model: Backbone, device: torch.device, encoder: bool) -> int:
    """Utterances per pass of a cache: 1 where batch-mates could change the outputs (padding), or for the
    encoder on a CPU; else :data:`CACHE_BATCH`."""
    if not model.fixed_input_shape:
        return 1
    return CPU_ENCODER_BATCH if encoder and torch.device(device).type == "cpu" else CACHE_BATCH


def _padded(feature_set: FeatureSet, indices: Sequence[int], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Utterances ``indices`` as one zero-padded batch [B, T, D] and their lengths [B], on ``device``."""
    x, lengths, _ = feature_set.collate(indices)
    return x.to(device), lengths.to(device)


def _batched(compute: Callable[[List[int]], List[np.ndarray]], n: int, batch: int,
             same: Callable[[np.ndarray, np.ndarray], bool], what: str, bar) -> Iterator[Tuple[int, np.ndarray]]:
    """(i, ``compute([i])[0]``) for i in 0..n-1, ``batch`` at a time where that gives the same results on this
    machine: the first batch is computed both ways, its one-at-a-time results are kept, and when ``same`` fails
    for any of them the rest go one at a time too (a GEMM library may pick other kernels, and so round
    differently, for another batch size). Every batch has ``batch`` utterances (the last one repeats its last)."""
    i = 0
    if batch > 1 and n > 1:
        first = list(range(min(batch, n)))
        alone = [compute([j])[0] for j in first]
        together = compute(first)
        if not all(same(a, b) for a, b in zip(alone, together)):
            batch = 1
            tqdm.write(f"{what}: batched outputs differ from one utterance at a time on this machine; "
                       "building it one utterance at a time", file=sys.stderr)
        yield from enumerate(alone)
        bar.update(len(first))
        i = len(first)
    while i < n:
        indices = list(range(i, min(i + batch, n)))
        # the last batch filled up with its last utterance: every batch has the shape the check ran on
        yield from zip(indices, compute(indices + indices[-1:] * (batch - len(indices))))
        bar.update(len(indices))
        i += len(indices)


def _prefix_rows(feature_set: FeatureSet, model: Backbone, k: int, progress: bool) -> Iterator[Row]:
    # fp32 (no autocast), and batched only where the stored outputs cannot depend on batch-mates: the file must
    # not depend on the batch or on the precision one trial happens to train in.
    device = next(model.parameters()).device
    what = f"prefix k={k} {feature_set.path.name}"

    def compute(indices: List[int]) -> List[np.ndarray]:
        hidden, lengths = model.encode_prefix(*_padded(feature_set, indices, device), k)
        return [hidden[j, : int(lengths[j])].float().cpu().numpy() for j in range(len(indices))]

    batch = _cache_batch(model, device, encoder=True)
    with torch.no_grad(), tqdm(total=len(feature_set), desc=what, unit="utt", disable=not progress) as bar:
        for i, out in _batched(compute, len(feature_set), batch, np.array_equal, what, bar):
            yield Row(feature_set.ids[i], feature_set.texts[i], feature_set.durations[i], out)


def load_prefix_set(feature_set: FeatureSet, model: Backbone, k: int, cache_dir: os.PathLike | str,
                    progress: bool = False) -> FeatureSet:
    """``model.encode_prefix(features, lengths, k)`` of every utterance of ``feature_set``, cached (process-safe).

    Computed on the *base* model: eval mode, no autograd, every injected adapter bypassed
    (so calling it before or after injection gives the same file), one utterance at a
    time, on the model's device. Modes and adapters are restored afterwards. The result
    is a :class:`FeatureSet` (ids, texts and durations of ``feature_set``; ``num_frames``
    and features [T', D] of the prefix output), written like the feature cache: atomically,
    under its lock, named from its content inside ``cache_dir``. k=0 is allowed: it caches
    the input stage (the Conformer's subsampling, wav2vec2's projection and positional
    convolution) and serves every trial."""
    _check_k(model, k)
    key = prefix_key(feature_set, model, k)
    path = Path(cache_dir).expanduser() / f"{feature_set.path.stem}-prefix{k}-{key[:20]}.arrow"
    with eval_mode(model), _adapters_bypassed(model):
        return open_or_build(path, key, _prefix_rows(feature_set, model, k, progress))


class TopOfModel(BackboneView):
    """Blocks [k, n) and the head of ``model``, on prefix outputs from :func:`load_prefix_set`.

    A :class:`~raysearch_adapters.models.base.BackboneView` at ``k`` that refuses a model with
    any adapter below block k, whose prefix the cache does not hold. Adapters must be injected
    before it is built."""

    def __init__(self, model: Backbone, k: int):
        _check_k(model, k)
        block_of = {name: w.block for name, w in wrapped(model).items()}
        below = [p for p, b in block_of.items() if b < k]
        if below:
            raise UserError(f"frozen-prefix cache k={k}: found adapters below block {k} ({', '.join(below)}); "
                            f"allowed: adapters in blocks >= {k} only (use k <= {min(block_of.values())})")
        super().__init__(model, k)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor):
        """The backbone's own outputs (CTC: log-probs and lengths) from block k."""
        return self.model.forward_from(hidden, lengths, self.k)


def teacher_key(feature_set: FeatureSet, model: Backbone) -> str:
    """sha256 of the input feature set's key, the base model's fingerprint and the cache layout."""
    payload = {"features": feature_set.key, "base": base_fingerprint(model), "teacher": True,
               "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _same_teacher(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two teacher outputs of one utterance agree: equal shapes (the same number of positions or frames)
    and values within fp32 rounding (a relative 1e-5 of the largest: batched GEMMs round differently). For a
    backbone whose rows hold token ids (Whisper's greedy token and top-k ids), the ids then agree exactly, as ids
    are integers far apart."""
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0.0, atol=1e-5 * max(1.0, float(np.abs(a).max(
        initial=0.0)))))


def _teacher_rows(feature_set: FeatureSet, model: Backbone, progress: bool, prefix: Optional[FeatureSet],
                  k: Optional[int]) -> Iterator[Row]:
    device = next(model.parameters()).device
    view = BackboneView(model, k if prefix is not None else None)
    inputs = feature_set if prefix is None else prefix
    what = f"teacher {feature_set.path.name}"

    def compute(indices: List[int]) -> List[np.ndarray]:
        return [o.float().cpu().numpy() for o in view.teacher(*_padded(inputs, indices, device))]

    # batched where the batch is one shape whatever its utterances: on the frozen-prefix outputs of a backbone
    # whose encoder input has one shape (Whisper's encoder states), or that backbone's own inputs (then the encoder
    # runs too: one at a time on a CPU)
    batch = _cache_batch(model, device, encoder=prefix is None)
    with torch.no_grad(), tqdm(total=len(feature_set), desc=what, unit="utt", disable=not progress) as bar:
        for i, out in _batched(compute, len(feature_set), batch, _same_teacher, what, bar):
            yield Row(feature_set.ids[i], feature_set.texts[i], feature_set.durations[i], out)


def load_teacher_set(feature_set: FeatureSet, model: Backbone, cache_dir: os.PathLike | str,
                     progress: bool = False, prefix: Optional[FeatureSet] = None, k: Optional[int] = None) -> FeatureSet:
    """The distillation teacher's outputs (``Backbone.teacher_from``) on every utterance, cached (process-safe).

    The teacher is the base model itself: computed with every adapter bypassed, in eval mode,
    fp32, one utterance at a time, so one file serves every trial whatever its placement
    (the teacher is the whole model's output) and a distillation step costs one adapted
    forward. Stored beside the prefix cache with the same keying (input features + base
    fingerprint); utterance ``i`` of the result belongs to utterance ``i`` of ``feature_set``.
    ``prefix``: ``feature_set``'s frozen-prefix cache at block ``k``, when one is at hand: the
    teacher then runs from block k on it (the same outputs, bit for bit, without running the
    frozen prefix again: Whisper's encoder is most of the cost)."""
    key = teacher_key(feature_set, model)
    path = Path(cache_dir).expanduser() / f"{feature_set.path.stem}-teacher-{key[:20]}.arrow"
    if prefix is not None and (k is None or prefix.ids != feature_set.ids):
        raise ValueError("load_teacher_set: prefix must be the prefix cache of feature_set at block k")
    with eval_mode(model), _adapters_bypassed(model):
        return open_or_build(path, key, _teacher_rows(feature_set, model, progress, prefix, k))


def measurement_block(handle, prefix_cache: bool, specaugment: bool) -> Optional[int]:
    """The block a trial trains and is measured from: where the frozen-prefix cache of its lowest adapted
    block starts (``Backbone.prefix_block``; ``train.prefix_cache``), unless SpecAugment changes the
    prefix's input (None: the whole model)."""
    return handle.model.prefix_block(handle.lowest_block) if prefix_cache and not specaugment else None


def view_from(model: Backbone, k: Optional[int]) -> BackboneView:
    """The model from block ``k`` (None: the whole model on features)."""
    return BackboneView(model, None) if k is None else TopOfModel(model, k)


def inputs_from(feature_set: FeatureSet, model: Backbone, k: Optional[int], cache_dir: os.PathLike | str,
                progress: bool = False) -> FeatureSet:
    """What :func:`view_from` ``(model, k)`` takes for ``feature_set``: the set itself, or its cached prefix at k."""
    return feature_set if k is None else load_prefix_set(feature_set, model, k, cache_dir, progress)
