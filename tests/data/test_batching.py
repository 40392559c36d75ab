"""Duration batching: bounded batches, little padding, deterministic order."""

import numpy as np
import pytest

from raysearch_adapters.data.batching import duration_batches


@pytest.fixture
def durations():
    return np.random.default_rng(0).uniform(0.5, 8.0, 500).tolist()


def test_every_index_once_and_padded_size_bounded(durations):
    batches = duration_batches(durations, max_seconds=30.0, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(len(durations)))
    for b in batches:
        assert len(b) * max(durations[i] for i in b) <= 30.0
    # Similar lengths together: on average under 15% of each batch is padding.
    padding = [1 - sum(durations[i] for i in b) / (len(b) * max(durations[i] for i in b)) for b in batches]
    assert np.mean(padding) < 0.15


def test_long_utterance_gets_its_own_batch():
    batches = duration_batches([1.0, 50.0, 2.0, 1.5], max_seconds=10.0, shuffle=False)
    assert [1] in batches and sorted(i for b in batches for i in b) == [0, 1, 2, 3]


def test_order_is_deterministic_per_seed_and_epoch(durations):
    same = duration_batches(durations, 30.0, seed=3, epoch=2)
    assert same == duration_batches(durations, 30.0, seed=3, epoch=2)
    assert same != duration_batches(durations, 30.0, seed=3, epoch=3)
    assert same != duration_batches(durations, 30.0, seed=4, epoch=2)


def test_no_shuffle_is_fixed_and_sorted(durations):
    fixed = duration_batches(durations, 30.0, shuffle=False, seed=0)
    assert fixed == duration_batches(durations, 30.0, shuffle=False, seed=9, epoch=5)
    flat = [i for b in fixed for i in b]
    assert flat == sorted(range(len(durations)), key=lambda i: durations[i])


def test_bad_limit_and_empty_input():
    with pytest.raises(ValueError, match="max_seconds"):
        duration_batches([1.0], 0)
    assert duration_batches([], 10.0) == []
