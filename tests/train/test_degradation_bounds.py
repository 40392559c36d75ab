"""The degradation's confidence bounds (a paired bootstrap over utterances) and per-utterance word errors, each
against a reference computed here independently."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest

from raysearch_adapters.metrics import error_counts, scored_errors, utterance_error_counts
from raysearch_adapters.train.objective import degradation, degradation_bounds, utterances_to_resolve


def _errors(n: int = 150, seed: int = 7):
    """Base and adapted word errors of n utterances, strongly paired: the adapted model errs where the base does,
    a few utterances better or worse (as an adapter that barely touches the original domain)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(4, 20, n)
    base = rng.binomial(words, 0.22)
    change = rng.choice([-2, -1, 0, 0, 0, 0, 1, 1, 3], n)
    adapted = np.clip(base + change, 0, None)
    return adapted, base, words


def _reference_bounds(adapted, base, words, confidence, relative=False, resamples=60_000, seed=123):
    """The paired percentile bootstrap written out: resample utterance indices, keep each utterance's pair."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(words), (resamples, len(words)))
    diff = 100.0 * (adapted[idx].sum(1) - base[idx].sum(1))
    stat = diff / base[idx].sum(1) if relative else diff / words[idx].sum(1)
    return np.quantile(stat, 1 - confidence), np.quantile(stat, confidence)


@pytest.mark.parametrize("confidence", [0.9, 0.95])
@pytest.mark.parametrize("relative", [False, True])
def test_the_bounds_equal_a_paired_bootstrap_computed_here(confidence, relative):
    adapted, base, words = _errors()
    mode = "relative" if relative else "absolute"
    low, high = degradation_bounds(adapted, base, words, mode, confidence, seed=0)
    ref_low, ref_high = _reference_bounds(adapted, base, words, confidence, relative)
    tol = 0.25 if relative else 0.06  # Monte-Carlo error of two independent bootstraps (relative: ~4x larger)
    assert low == pytest.approx(ref_low, abs=tol) and high == pytest.approx(ref_high, abs=tol)
    point = degradation(100.0 * adapted.sum() / words.sum(), 100.0 * base.sum() / words.sum(), mode)
    assert low < point < high
    # pairing matters: resampling the base and adapted errors independently gives a far wider interval
    rng = np.random.default_rng(1)
    i, j = rng.integers(0, len(words), (2, 20_000, len(words)))
    unpaired = 100.0 * (adapted[i].sum(1) / words[i].sum(1) - base[j].sum(1) / words[j].sum(1))
    if not relative:
        assert np.quantile(unpaired, confidence) - np.quantile(unpaired, 1 - confidence) > 2 * (high - low)


def test_the_bounds_are_seeded_and_an_unchanged_model_has_none_to_speak_of():
    adapted, base, words = _errors()
    assert degradation_bounds(adapted, base, words, "absolute", 0.95, seed=[3, 200]) == \
        degradation_bounds(adapted, base, words, "absolute", 0.95, seed=[3, 200])
    assert degradation_bounds(base, base, words, "absolute", 0.95) == (0.0, 0.0)
    with pytest.raises(ValueError, match="one of each per utterance"):
        degradation_bounds(adapted[:-1], base, words, "absolute", 0.95)


def test_utterances_to_resolve_scales_with_the_square_of_the_half_width():
    assert utterances_to_resolve(2.0, 1.0, 200) == 800
    assert utterances_to_resolve(1.5, 1.0, 100) == 225
    assert utterances_to_resolve(0.8, 1.0, 100) is None


def test_per_utterance_errors_sum_to_the_corpus_counts_and_match_each_utterance_alone():
    refs = ["the cat sat on the mat", "a b c", "", "hello world", "one two three four"]
    hyps = ["the cat sat on mat", "a x c d", "noise", "", "one too three four five"]
    errors, words = utterance_error_counts(refs, hyps)
    # each utterance alone; an empty reference: every hypothesis word is an insertion
    alone = [round(jiwer.wer(r, h) * len(r.split())) if r else len(h.split()) for r, h in zip(refs, hyps)]
    assert errors == alone == [1, 2, 1, 2, 2]
    assert words == [6, 3, 0, 2, 4]
    assert error_counts(refs, hyps) == (7, 15)  # the WER counts no errors where there is no reference word
    assert scored_errors(errors, words) == [1, 2, 0, 2, 2]
