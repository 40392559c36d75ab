"""The constrained objective's terms: degradation of the original domain and the limit kappa.

Degradation is ``orig_wer_adapted - orig_wer_base`` on original-domain dev, in absolute WER
points (``kappa_mode=absolute``) or as a percentage of the base WER (``relative``; kappa is
then a fraction, so 0.05 allows 5 % relative degradation).
"""

from __future__ import annotations


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


def is_feasible(degradation_value: float, limit: float) -> bool:
    """A trial is feasible when its degradation is at most the limit."""
    return degradation_value <= limit


# What ASHA minimises: dev new-domain WER plus this many points per point of degradation over the
# limit. On new-domain WER alone ASHA keeps the trials that learn fastest, which are the ones
# wrecking the original domain (+17..+47 points seen); ranking every infeasible trial behind every
# feasible one instead stops the trials that learn and protect the original domain well but sit a
# little over the limit at an early, noisy evaluation (+1.5 at step 100, +0.1 at step 300 seen),
# and keeps trials that learn nothing. A finite price per point does both.
INFEASIBLE_PENALTY = 10.0


def asha_score(dev_wer_new: float, degradation_value: float, limit: float) -> float:
    """What ASHA minimises: dev new-domain WER + :data:`INFEASIBLE_PENALTY` x the degradation over the limit."""
    return dev_wer_new + INFEASIBLE_PENALTY * max(0.0, degradation_value - limit)


def evaluation_rank(evaluation: dict, limit: float) -> tuple:
    """Sort key of a trial's evaluations, best first: feasible ones by dev new-domain WER (then degradation),
    then infeasible ones by degradation (the least infeasible first). A trial reports its best one."""
    deg, wer = evaluation["degradation"], evaluation["dev_wer_new"]
    return (0, wer, deg) if is_feasible(deg, limit) else (1, deg, wer)
