"""The constrained objective's terms: degradation of the original domain, its confidence bounds and the limit
kappa.

Degradation is ``orig_wer_adapted - orig_wer_base`` on original-domain dev, in absolute WER
points (``kappa_mode=absolute``) or as a percentage of the base WER (``relative``; kappa is
then a fraction, so 0.05 allows 5 % relative degradation).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.stats import bootstrap

from raysearch_adapters.results.select import held_degradation, violation, within_limits


def degradation(orig_wer_adapted: float, orig_wer_base: float, kappa_mode: str) -> float:
    """Original-domain dev WER increase, in the units of :func:`degradation_limit`."""
    diff = orig_wer_adapted - orig_wer_base
    if kappa_mode == "absolute":
        return diff
    if kappa_mode == "relative":
        return 100.0 * diff / max(orig_wer_base, 1e-9)
    raise ValueError(f"kappa_mode: got {kappa_mode!r}; allowed: absolute, relative")


def degradation_limit(kappa: float, kappa_mode: str) -> float:
    """Kappa in degradation units: WER points (absolute) or percent of the base WER (relative)."""
    if kappa_mode == "absolute":
        return kappa
    if kappa_mode == "relative":
        return 100.0 * kappa
    raise ValueError(f"kappa_mode: got {kappa_mode!r}; allowed: absolute, relative")


# How feasibility is decided: on the degradation itself, or on its one-sided upper confidence bound.
FEASIBILITY_MODES = ("point", "upper")
BOOTSTRAP_RESAMPLES = 4000  # utterance resamples per interval (the bound moves by < 0.05 points between seeds)


def degradation_bounds(adapted_errors: Sequence[int], base_errors: Sequence[int], words: Sequence[int],
                       kappa_mode: str, confidence: float, seed: Sequence[int] | int = 0) -> Tuple[float, float]:
    """One-sided lower and upper confidence bounds at ``confidence`` of the degradation of a dev set, by a paired
    percentile bootstrap over its utterances: each resample draws utterances with replacement, keeping each
    utterance's base and adapted word errors together, and computes the degradation of the resampled set
    (WER = its errors / its reference words, as the point estimate does). The bounds are the resamples'
    ``1 - confidence`` and ``confidence`` quantiles (scipy.stats.bootstrap, seeded: the same inputs give the same
    bounds)."""
    a, b, w = (np.asarray(x, dtype=np.float64) for x in (adapted_errors, base_errors, words))
    if not (len(a) == len(b) == len(w)) or len(a) == 0:
        raise ValueError(f"degradation bounds: {len(a)} adapted, {len(b)} base and {len(w)} word counts; "
                         "allowed: one of each per utterance, at least one utterance")
    if np.array_equal(a, b):  # every resample's degradation is 0 (e.g. a zero-initialised adapter)
        return 0.0, 0.0

    def statistic(a_s, b_s, w_s, axis=-1):
        diff = 100.0 * (a_s.sum(axis=axis) - b_s.sum(axis=axis))
        if kappa_mode == "absolute":  # WER points
            return diff / np.maximum(w_s.sum(axis=axis), 1.0)
        return diff / np.maximum(b_s.sum(axis=axis), 1e-9)  # percent of the base WER (the word counts cancel)

    if kappa_mode not in ("absolute", "relative"):
        raise ValueError(f"kappa_mode: got {kappa_mode!r}; allowed: absolute, relative")
    res = bootstrap((a, b, w), statistic, paired=True, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES,
                    confidence_level=2 * confidence - 1, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def utterances_to_resolve(half_width: float, limit: float, utterances: int) -> Optional[int]:
    """How many utterances a dev set would need for its degradation bound to sit within ``limit`` of the
    estimate, from a half-width measured on ``utterances`` (the half-width falls as 1/sqrt(n)); None when it
    already does."""
    if half_width <= limit or limit <= 0:
        return None
    return int(np.ceil(utterances * (half_width / limit) ** 2))


# What ASHA minimises: dev new-domain WER plus this many points per point of degradation over the
# limit. On new-domain WER alone ASHA keeps the trials that learn fastest, which are the ones
# wrecking the original domain (+17..+47 points seen); ranking every infeasible trial behind every
# feasible one instead stops the trials that learn and protect the original domain well but sit a
# little over the limit at an early, noisy evaluation (+1.5 at step 100, +0.1 at step 300 seen),
# and keeps trials that learn nothing. A finite price per point does both.
INFEASIBLE_PENALTY = 10.0


def asha_score(dev_wer_new: float, degradation_value: float, limit: float, new_loops: Optional[int] = None,
               max_new_loops: Optional[int] = None) -> float:
    """What ASHA minimises: dev new-domain WER + :data:`INFEASIBLE_PENALTY` x how far the evaluation is from
    feasible (the degradation over the limit, and the looping utterances over ``max_new_loops`` at
    ``results.select.LOOP_PRICE`` each: ``results.select.violation``)."""
    return asha_score_of({"dev_wer_new": dev_wer_new, "degradation": degradation_value, "new_loops": new_loops},
                         limit, max_new_loops)


def asha_score_of(evaluation: dict, limit: float, max_new_loops: Optional[int] = None, prefix: str = "",
                  widen: float = 1.0) -> float:
    """:func:`asha_score` of an evaluation's metrics (``prefix`` ``eval_``: a result's latest one): its dev new WER
    plus :data:`INFEASIBLE_PENALTY` x ``results.select.violation`` (summed over its protected sets, each against
    its own limit times ``widen``)."""
    return float(evaluation[f"{prefix}dev_wer_new"]) + INFEASIBLE_PENALTY * violation(evaluation, limit, max_new_loops,
                                                                                      prefix, widen)


def evaluation_rank(evaluation: dict, limit: float, max_new_loops: Optional[int] = None) -> tuple:
    """Sort key of a trial's evaluations, best first: feasible ones (``results.select.within_limits``) by dev
    new-domain WER (then the degradation held to the limit), then infeasible ones by how far from feasible they
    are (``results.select.violation``; the least infeasible first). A trial reports its best one."""
    deg, wer = held_degradation(evaluation), evaluation["dev_wer_new"]
    if within_limits(evaluation, limit, max_new_loops):
        return (0, wer, deg)
    return (1, violation(evaluation, limit, max_new_loops), deg, wer)
