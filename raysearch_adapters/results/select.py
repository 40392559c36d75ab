"""The best trials of a results table: the feasible winner on dev and the Pareto front.

Pure functions over ``trials.parquet`` rows, in the results layer so the search (at its end)
and the dashboard (live, while trials still run) choose with the same code.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

# Each row reports its trial's best evaluation (the feasible one with the lowest new-domain WER,
# else the least infeasible), whose adapter the trial's checkpoint keeps.
MEASURED_STATUSES = ("COMPLETE", "PRUNED")
# Only a trial that trained its whole budget can win, in the summary, the dashboard and the Optuna
# study alike (``study.best_trial`` counts COMPLETE trials only). ASHA ranks trials by their best
# evaluation so far, infeasible ones last, so a stopped trial was behind the trials of its rung.
WINNER_STATUSES = ("COMPLETE",)


def is_measured(row: dict) -> bool:
    """Whether a trial finished (COMPLETE or PRUNED) with a dev new-domain WER and a degradation."""
    return (row["status"] in MEASURED_STATUSES and row.get("dev_wer_new") is not None
            and row.get("degradation") is not None)


def measured(rows: Sequence[dict]) -> List[dict]:
    """The trials that :func:`is_measured`."""
    return [r for r in rows if is_measured(r)]


def held_degradation(row: dict, prefix: str = "") -> float:
    """The degradation a row's feasibility holds to the limit: the estimate, or with ``search.feasibility=upper``
    its upper confidence bound (a row without the column, or without a bound, holds the estimate). ``prefix``:
    ``eval_`` reads a trial result's latest evaluation instead of its best one."""
    held = row.get(f"{prefix}held_degradation")
    return float(row[f"{prefix}degradation"] if held is None else held)


# What one looping utterance over ``search.max_new_loops`` weighs against degradation over the limit, in degradation
# units, where infeasible results are ranked (a trial's least infeasible evaluation, ASHA's penalty, the closest
# infeasible trial): one loop counts as far from feasible as one point of degradation over the limit.
LOOP_PRICE = 1.0


def new_loops(row: dict, prefix: str = "") -> int:
    """The looping hypotheses a row's evaluation added on original-domain dev (0 when not measured)."""
    return int(row.get(f"{prefix}new_loops") or 0)


def set_entries(sets) -> List[dict]:
    """An evaluation's ``sets`` as a list, in order: a trial's results hold them by name (Tune's loggers flatten a
    mapping), the tables as a list."""
    if isinstance(sets, dict):
        return list(sets.values())
    return list(sets or [])


# The measured sets of results that do not name theirs (summary.json / trials metadata ``sets``): the default ones.
DEFAULT_SET_ROLES = ({"set": "new", "role": "target"}, {"set": "original", "role": "protected"})


def dev_wers(row: dict) -> Dict[str, float]:
    """A row's dev WER per set (its ``sets``), else per default set (new, original)."""
    if row.get("sets"):
        return {s["set"]: s["dev_wer"] for s in set_entries(row["sets"])}
    return {"new": row["dev_wer_new"], "original": row["dev_wer_original"]}


def protected_sets(row: dict, prefix: str = "") -> List[dict]:
    """The protected sets of a row's evaluation (``sets``: each with its held degradation and limit); [] for a row
    without them (one protected set, held to the limit a caller passes)."""
    return [s for s in set_entries(row.get(f"{prefix}sets")) if s.get("role") == "protected"]


def held_limits(row: dict, limit: float, prefix: str = "") -> List[Tuple[Optional[str], float, float]]:
    """``[(set, held degradation, its limit), ...]``: each protected set of a row's evaluation against its own
    limit; a row without ``sets`` holds its :func:`held_degradation` to ``limit`` (set None)."""
    sets = protected_sets(row, prefix)
    if not sets:
        return [(None, held_degradation(row, prefix), limit)]
    return [(s["set"], s["held_degradation"], s["limit"]) for s in sets]


def violation(row: dict, limit: float, max_new_loops: Optional[int] = None, prefix: str = "",
              widen: float = 1.0) -> float:
    """How far a row is from feasible, in degradation units (0 when it is): the sum over its protected sets of the
    held degradation over the set's limit (times ``widen``; a row without ``sets``: :func:`held_degradation` over
    ``limit``), plus :data:`LOOP_PRICE` per looping utterance it added beyond ``max_new_loops`` (None: loops are not
    held to a limit)."""
    over = sum(max(0.0, held - widen * set_limit) for _, held, set_limit in held_limits(row, limit, prefix))
    if max_new_loops is not None:
        over += LOOP_PRICE * max(0, new_loops(row, prefix) - max_new_loops)
    return over


def within_limits(row: dict, limit: float, max_new_loops: Optional[int] = None, prefix: str = "") -> bool:
    """Whether a row is feasible: every protected set's held degradation within its limit (a row without ``sets``:
    :func:`held_degradation` <= ``limit``) and, with ``max_new_loops`` an int, at most that many looping hypotheses
    added on the protected dev sets."""
    within = all(held <= set_limit for _, held, set_limit in held_limits(row, limit, prefix))
    return within and (max_new_loops is None or new_loops(row, prefix) <= max_new_loops)


def _order(row: dict) -> tuple:
    """Ties go to the trial the search started first (trial ids are random: a tie broken on them would not
    repeat from one run to the next)."""
    number = row.get("trial_number")
    return (0, number, row["trial_id"]) if number is not None else (1, 0, row["trial_id"])


def select_winner(rows: Sequence[dict], limit: float, max_new_loops: Optional[int] = None) -> Optional[dict]:
    """The COMPLETE feasible trial (:func:`within_limits`) with the lowest dev new WER; ties: lower held
    degradation, then the earlier trial; None if none."""
    feasible = [r for r in measured(rows)
                if r["status"] in WINNER_STATUSES and within_limits(r, limit, max_new_loops)]
    return min(feasible, key=lambda r: (r["dev_wer_new"], held_degradation(r), *_order(r)), default=None)


def ranked(rows: Sequence[dict]) -> List[dict]:
    """Every trial, best first, as the dashboard and the report list them: the measured trials (:func:`measured`)
    feasible before infeasible (as their row says), then by dev new WER, held degradation and start order (the
    keys of :func:`select_winner`); the others (running, failed) after them, in their order."""
    def key(r: dict) -> tuple:
        if not is_measured(r):
            return (1,)
        return (0, not r.get("feasible"), r["dev_wer_new"], held_degradation(r), *_order(r))

    return sorted(rows, key=key)


def best_per_type(rows: Sequence[dict], limit: float, max_new_loops: Optional[int] = None) -> Dict[str, dict]:
    """Per adapter type, the trial :func:`select_winner` would choose among that type's trials (the search's
    winner is the best of these); types without a feasible COMPLETE trial are left out."""
    types = sorted({r.get("type") for r in rows if r.get("type")})
    best = {t: select_winner([r for r in rows if r.get("type") == t], limit, max_new_loops) for t in types}
    return {t: r for t, r in best.items() if r is not None}


def pareto_front(rows: Sequence[dict]) -> List[dict]:
    """Trials not dominated in (dev new WER, degradation), both minimised; ordered by dev new WER."""
    done = measured(rows)

    def dominated(r: dict) -> bool:
        return any(o["dev_wer_new"] <= r["dev_wer_new"] and o["degradation"] <= r["degradation"]
                   and (o["dev_wer_new"], o["degradation"]) != (r["dev_wer_new"], r["degradation"]) for o in done)

    return sorted((r for r in done if not dominated(r)), key=lambda r: (r["dev_wer_new"], r["degradation"]))


def closest_infeasible(rows: Sequence[dict], limit: float, max_new_loops: Optional[int] = None) -> Optional[dict]:
    """The infeasible trial nearest to feasible (lowest :func:`violation`, then held degradation; ties: lower dev
    new WER)."""
    infeasible = [r for r in measured(rows) if not within_limits(r, limit, max_new_loops)]
    return min(infeasible, key=lambda r: (violation(r, limit, max_new_loops), held_degradation(r), r["dev_wer_new"],
                                          *_order(r)), default=None)
