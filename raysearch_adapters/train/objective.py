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


# Added to an infeasible trial's dev new-domain WER for early stopping, so that ASHA ranks it
# behind every feasible trial of its rung. On new-domain WER alone ASHA keeps the trials that
# learn fastest, which are the ones wrecking the original domain, and stops the careful ones.
INFEASIBLE_OFFSET = 1000.0


def asha_score(dev_wer_new: float, degradation_value: float, limit: float) -> float:
    """What ASHA minimises: dev new-domain WER, plus :data:`INFEASIBLE_OFFSET` when over the limit."""
    return dev_wer_new + (0.0 if is_feasible(degradation_value, limit) else INFEASIBLE_OFFSET)
