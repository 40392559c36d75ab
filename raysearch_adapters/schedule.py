"""Learning-rate schedules: an adapter trial's at each step, and the base model's pretraining (:func:`warmup_cosine`).

``constant`` and ``inverse_sqrt`` have no horizon: the rate at step s does not depend on how
long the trial will train, so a trial that the budget scheduler lets go on continues exactly as
if it had been planned that long (its step counter, optimizer state and rate carry on), and a
trial stopped early was trained exactly like the first steps of a long one. ``cosine`` decays to
0 at the trial's ``steps`` (a horizon fixed when the trial starts); only a search of fixed-length
trials (no ``search.budget_steps``) may use it.

``wsd`` (warm-up, stable, decay) is ``constant`` plus a cool-down: the rate falls linearly to 0
over ``decay_steps`` steps, starting either ``decay_steps`` before the trial's last possible step
or as soon as the trial stops improving (``search.patience``), whichever comes first. A trial is
only cooled down once it is sure to end, so no trial the halving may still continue has decayed.
"""

from __future__ import annotations

import math

SCHEDULES = ("wsd", "constant", "inverse_sqrt", "cosine")
HORIZON_FREE = ("wsd", "constant", "inverse_sqrt")


def cooldown_factor(step: int, decay_start: int, decay_steps: int) -> float:
    """The multiplier of a ``wsd`` cool-down that starts at step ``decay_start``: from 1 there down to
    1 / decay_steps at its last step (``decay_start + decay_steps - 1``), linearly; 1 before it."""
    if step < decay_start:
        return 1.0
    return max(0.0, (decay_start + decay_steps - step) / decay_steps)


def lr_factor(schedule: str, step: int, warmup_steps: int, horizon: int) -> float:
    """The multiplier of the peak rate for optimiser step ``step`` (0-based).

    Every schedule starts with a linear warm-up over ``warmup_steps`` (the first step at
    1/warmup of the peak); then ``constant`` stays at the peak, ``inverse_sqrt`` decays as
    sqrt(warmup / (step + 1)) (continuous at the end of the warm-up), and ``cosine`` follows half
    a cosine from the peak to 0 at step ``horizon``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule in ("constant", "wsd"):  # wsd's cool-down is cooldown_factor's
        return 1.0
    if schedule == "inverse_sqrt":
        return math.sqrt(max(warmup_steps, 1) / (step + 1))
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(horizon - warmup_steps, 1))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")


def warmup_cosine(step: int, warmup: int, progress: float, floor: float = 0.01) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``floor``
    as ``progress`` (fraction of the budget spent, 0..1) reaches 1."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
