"""Batches by duration: utterances of similar length together, so padding stays small."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

# Training order jitters each duration by up to this factor before sorting, so batch
# composition changes between epochs while lengths inside a batch stay close.
_JITTER = 0.1


def duration_batches(durations: Sequence[float], max_seconds: float, shuffle: bool = True,
                     seed: int = 0, epoch: int = 0) -> List[List[int]]:
    """Index batches whose padded duration (size x longest) is <= max_seconds; order from (seed, epoch).

    An utterance longer than ``max_seconds`` forms a batch of its own. ``shuffle=False``
    gives one fixed order (sorted by duration) for evaluation."""
    if max_seconds <= 0:
        raise ValueError(f"max_seconds: got {max_seconds}; must be > 0")
    d = np.asarray(durations, dtype=np.float64)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = np.argsort(d * np.exp(rng.uniform(-_JITTER, _JITTER, len(d))), kind="stable")
    else:
        order = np.argsort(d, kind="stable")
    batches: List[List[int]] = []
    current: List[int] = []
    longest = 0.0
    for i in order.tolist():
        longest_if_added = max(longest, d[i])
        if current and longest_if_added * (len(current) + 1) > max_seconds:
            batches.append(current)
            current, longest_if_added = [], d[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches
