"""The frozen-prefix cache: blocks below a trial's lowest adapted block run once per utterance, not per step.

Adapters in blocks >= k leave blocks [0, k) untouched, and the base always runs in eval
mode (:meth:`AdapterHandle.train`), so those blocks are a fixed function of the cached
inputs. :func:`load_prefix_set` stores their outputs (``encode_prefix``) as a feature-cache
file, memory-mapped and shared by every trial on a node whose lowest adapted block is >= k;
:class:`TopOfModel` runs blocks [k, n) and the head on it, and stands in for the model in
``train_adapters`` and ``evaluate``.

This lives in ``train`` (not ``data`` or ``models``): it needs the adapters (the wrappers
to find adapted blocks, the base fingerprint for the key), which those layers never import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import torch
from torch import nn
from tqdm import tqdm

from raysearch_adapters.adapters.inject import AdapterWrapper
from raysearch_adapters.adapters.state import base_fingerprint
from raysearch_adapters.data.cache import CACHE_VERSION, FeatureSet, Row, eval_mode, open_or_build
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.base import Backbone


def _blocks_of(model: Backbone, paths: Sequence[str]) -> Dict[str, int]:
    """Block index of each adapter target path, from the positions ``model.adaptable_blocks()`` lists."""
    block_of = {path: b.index for b in model.adaptable_blocks() for path in b.positions.values()}
    unknown = [p for p in paths if p not in block_of]
    if unknown:
        raise UserError(f"adapters at {', '.join(unknown)}: not a position of any adaptable block of {model.name}; "
                        f"allowed: the module paths adaptable_blocks() lists (e.g. {next(iter(block_of))})")
    return {p: block_of[p] for p in paths}


def _check_k(model: Backbone, k: int) -> None:
    n = len(model.adaptable_blocks())
    if not 0 <= k <= n:
        raise UserError(f"frozen-prefix cache: got k={k}; allowed: 0..{n} ({model.name} has {n} blocks)")


def _adapter_paths(model: nn.Module) -> List[str]:
    """Module paths of every adapter injected into ``model`` (enabled or not)."""
    return [m.name for m in model.modules() if isinstance(m, AdapterWrapper)]


def prefix_key(feature_set: FeatureSet, model: Backbone, k: int) -> str:
    """sha256 of the input feature set's key, the whole base model's fingerprint, k and the cache layout.

    The fingerprint ignores adapters, so a model with adapters injected has the same key."""
    payload = {"features": feature_set.key, "base": base_fingerprint(model), "k": k, "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def _adapters_bypassed(model: nn.Module) -> Iterator[None]:
    """Every injected adapter off (the exact base model), then each one's own state back."""
    wrappers = [m for m in model.modules() if isinstance(m, AdapterWrapper)]
    states = [w.enabled for w in wrappers]
    for w in wrappers:
        w.enabled = False
    try:
        yield
    finally:
        for w, state in zip(wrappers, states):
            w.enabled = state


def _prefix_rows(feature_set: FeatureSet, model: Backbone, k: int, progress: bool) -> Iterator[Row]:
    # One utterance at a time and in fp32 (no autocast): the stored outputs must not depend
    # on batch-mates or on the precision one trial happens to train in.
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in tqdm(range(len(feature_set)), desc=f"prefix k={k} {feature_set.path.name}", unit="utt",
                      disable=not progress):
            n = feature_set.num_frames[i]
            hidden, lengths = model.encode_prefix(feature_set.features(i)[None].to(device),
                                                  torch.tensor([n], device=device), k)
            yield Row(feature_set.ids[i], feature_set.texts[i], feature_set.durations[i],
                      hidden[0, : int(lengths[0])].float().cpu().numpy())


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


class TopOfModel(nn.Module):
    """Blocks [k, n) and the CTC head of ``model``, on prefix outputs from :func:`load_prefix_set`.

    Call it like the model (``(hidden, lengths) -> (log-probs, lengths)``); it has the
    model's ``tokenizer`` and parameters, so ``train_adapters`` and ``evaluate`` take it
    in place of the model. Refuses a model with any adapter below block k, whose prefix
    the cache does not hold. Adapters must be injected before it is built.
    """

    def __init__(self, model: Backbone, k: int):
        super().__init__()
        _check_k(model, k)
        blocks = _blocks_of(model, _adapter_paths(model))
        below = [p for p, b in blocks.items() if b < k]
        if below:
            raise UserError(f"frozen-prefix cache k={k}: found adapters below block {k} ({', '.join(below)}); "
                            f"allowed: adapters in blocks >= {k} only (use k <= {min(blocks.values())})")
        self.model = model
        self.k = k
        self.training = model.training

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor):
        return self.model.forward_from(hidden, lengths, self.k)

    def train(self, mode: bool = True) -> "TopOfModel":
        """Sets only this wrapper's flag, except that eval mode reaches the whole model.

        ``evaluate`` calls ``model.eval()`` then ``model.train(was_training)``; passing
        train mode on would put the frozen base (dropout, BatchNorm statistics) into training.
        The adapters' modes belong to :meth:`AdapterHandle.train`, as without the wrapper."""
        self.training = mode
        if not mode:
            self.model.eval()
        return self
