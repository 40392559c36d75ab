"""The best trials of a results table: the feasible winner on dev and the Pareto front.

Pure functions over ``trials.parquet`` rows, in the results layer so the search (at its end)
and the dashboard (live, while trials still run) choose with the same code.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

# A PRUNED trial's adapter was checkpointed at its last evaluation, which its row reports.
CANDIDATE_STATUSES = ("COMPLETE", "PRUNED")


def measured(rows: Sequence[dict]) -> List[dict]:
    """Finished trials (COMPLETE or PRUNED) with a dev new-domain WER and a degradation."""
    return [r for r in rows if r["status"] in CANDIDATE_STATUSES and r.get("dev_wer_new") is not None
            and r.get("degradation") is not None]


def select_winner(rows: Sequence[dict], limit: float) -> Optional[dict]:
    """The feasible trial (degradation <= ``limit``) with the lowest dev new WER; ties: lower degradation; None if none."""
    feasible = [r for r in measured(rows) if r["degradation"] <= limit]
    return min(feasible, key=lambda r: (r["dev_wer_new"], r["degradation"], r["trial_id"]), default=None)


def pareto_front(rows: Sequence[dict]) -> List[dict]:
    """Trials not dominated in (dev new WER, degradation), both minimised; ordered by dev new WER."""
    done = measured(rows)

    def dominated(r: dict) -> bool:
        return any(o["dev_wer_new"] <= r["dev_wer_new"] and o["degradation"] <= r["degradation"]
                   and (o["dev_wer_new"], o["degradation"]) != (r["dev_wer_new"], r["degradation"]) for o in done)

    return sorted((r for r in done if not dominated(r)), key=lambda r: (r["dev_wer_new"], r["degradation"]))


def closest_infeasible(rows: Sequence[dict], limit: float) -> Optional[dict]:
    """The infeasible trial nearest to the limit (lowest degradation; ties: lower dev new WER)."""
    infeasible = [r for r in measured(rows) if r["degradation"] > limit]
    return min(infeasible, key=lambda r: (r["degradation"], r["dev_wer_new"], r["trial_id"]), default=None)
