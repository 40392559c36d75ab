"""How a search spends a budget of optimiser steps: successive halving, then the finalists train on.

A cohort of ``cohort`` trials trains to the first rung (``grace`` steps); at each rung every
trial still in the race has reached it, the best ``max(finalists, ceil(n / eta))`` go on to
the next rung (``eta`` times further) and the rest stop. Once at most ``finalists`` trials
are left, they are the finalists: each may train on for an equal share of what the halving
left of the budget, and stops earlier when it stops improving (``search.patience``).

Decisions are taken only when every trial of a rung has reached it (synchronous halving), so
which trials go on depends on their evaluations only, never on which trial happened to finish
first: the same config and seed give the same trials and the same winner.

With ``cohort`` unset, the cohort is the largest one whose halving costs at most
``EXPLORE_SHARE`` of the budget: half the budget explores configs, half trains the best ones long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

EXPLORE_SHARE = 0.5  # of the budget at most, spent on the halving when the cohort size is left to the budget


class HalvingError(ValueError):
    """A budget that cannot be spent as asked (the message says why and what would fit)."""


@dataclass(frozen=True)
class HalvingPlan:
    """The planned halving: cohort size, the rung milestones (steps) and how many trials reach each,
    its cost, and each finalist's share of the rest of the budget (steps beyond the last milestone)."""

    budget: int
    cohort: int
    milestones: List[int]  # the steps of each rung; the last is where the finalists' own training starts
    alive: List[int]  # trials that train up to each milestone
    halving_cost: int  # steps the cohort spends up to the last milestone
    finalist_share: int  # further steps each finalist may train (a multiple of the evaluation interval)

    @property
    def finalists(self) -> int:
        return self.alive[-1]


def next_alive(n: int, eta: int, finalists: int) -> int:
    """How many of ``n`` trials at a rung go on (all of them once ``n <= finalists``)."""
    return n if n <= finalists else max(finalists, math.ceil(n / eta))


def _rungs(cohort: int, grace: int, eta: int, finalists: int) -> tuple[List[int], List[int], int]:
    milestones, alive, cost, previous, n, m = [], [], 0, 0, cohort, grace
    while True:
        milestones.append(m)
        alive.append(n)
        cost += n * (m - previous)
        if n <= finalists:
            return milestones, alive, cost
        previous, n, m = m, next_alive(n, eta, finalists), m * eta


def halving_plan(budget: int, grace: int, eta: int, finalists: int, eval_every: int,
                 cohort: Optional[int] = None) -> HalvingPlan:
    """The plan for ``budget`` steps; ``grace`` (the first rung) and every milestone are multiples of
    ``eval_every`` when ``grace`` is. Raises :class:`HalvingError` when the budget cannot hold it."""
    if budget < grace:
        raise HalvingError(f"smaller than one rung: the first rung alone is {grace} steps")
    if cohort is None:
        cohort = 1
        while _rungs(cohort + 1, grace, eta, finalists)[2] <= EXPLORE_SHARE * budget:
            cohort += 1
    milestones, alive, cost = _rungs(cohort, grace, eta, finalists)
    if cost > budget:
        fits = 1
        while _rungs(fits + 1, grace, eta, finalists)[2] <= budget:
            fits += 1
        raise HalvingError(f"{cohort} trials need {cost} steps to halve down to {min(cohort, finalists)} "
                           f"finalist(s) (first rung {grace} steps, reduction factor {eta}); this budget holds "
                           f"at most {fits} trial(s)")
    share = (budget - cost) // alive[-1] // eval_every * eval_every
    return HalvingPlan(budget=budget, cohort=cohort, milestones=milestones, alive=alive, halving_cost=cost,
                       finalist_share=share)
