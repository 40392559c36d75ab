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


class SecondsSampler:
    """Draws batches of a requested amount of audio from a set, endlessly, each utterance once per epoch.

    :meth:`take` goes through a shuffled order (reshuffled every epoch, from ``seed``) and takes
    utterances while the audio taken stays nearest the requested seconds: it adds the next one
    when that lands closer to the target than stopping, so a draw is within half the longest
    utterance of what was asked. Used for the replay and distillation parts of a training batch."""

    def __init__(self, durations: Sequence[float], seed: Sequence[int] | int):
        if not len(durations):
            raise ValueError("SecondsSampler: no utterances to draw from")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.seed = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)]
        self.epoch = 0
        self._order: List[int] = []
        self._pos = 0

    def _next_index(self) -> int:
        if self._pos == len(self._order):
            rng = np.random.default_rng(self.seed + [self.epoch])
            self._order = rng.permutation(len(self.durations)).tolist()
            self._pos = 0
            self.epoch += 1
        return self._order[self._pos]

    def take(self, seconds: float, at_least_one: bool = False) -> List[int]:
        """Indices whose total duration is nearest ``seconds`` (empty when that is under half an utterance,
        unless ``at_least_one``)."""
        taken: List[int] = []
        total = 0.0
        while True:
            i = self._next_index()
            d = float(self.durations[i])
            if total + d / 2.0 > seconds and (taken or not at_least_one):
                return taken
            taken.append(i)
            total += d
            self._pos += 1
