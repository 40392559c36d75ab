"""One evaluation over several sets: the objective is the targets' mean WER, each protected set is held to its own
limit with its own bounds and loops, and the single columns describe the binding set."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysearch_adapters.results.select import closest_infeasible, select_winner, violation, within_limits
from raysearch_adapters.train.loop import Protected, UtteranceErrors, evaluation_metrics
from raysearch_adapters.train.objective import INFEASIBLE_PENALTY, asha_score_of, degradation_bounds


def _errors(errors, words, looping=None):
    looping = np.zeros(len(errors), bool) if looping is None else np.asarray(looping, bool)
    return UtteranceErrors(np.asarray(errors), np.asarray(words), looping)


WORDS = [10] * 8
BASE_A = _errors([1, 0, 2, 1, 0, 1, 0, 1], WORDS)  # 6 errors / 80 words: 7.5 %
BASE_B = _errors([2, 2, 1, 0, 3, 1, 0, 1], WORDS)  # 10 / 80: 12.5 %


def _measure(limit_a=1.0, limit_b=1.0, feasibility="point", looping_b=None, max_new_loops=None):
    measured = {"new": _errors([3] * 8, WORDS), "accented": _errors([5] * 8, WORDS),
                "clean": _errors([1, 0, 2, 1, 0, 1, 0, 1], WORDS),  # the base's errors: degradation 0
                "noisy": _errors([2, 3, 1, 1, 3, 1, 1, 1], WORDS, looping_b)}  # 13 / 80: +3.75 points
    protected = [Protected("clean", BASE_A, limit_a), Protected("noisy", BASE_B, limit_b)]
    return evaluation_metrics(40, 2, measured, ["new", "accented"], protected, feasibility, 0.9, 7, max_new_loops)


def test_the_second_set_binds_and_every_set_is_reported_with_its_own_limit():
    m = _measure(limit_a=1.0, limit_b=2.0)
    assert m["dev_wer_new"] == pytest.approx((30.0 + 50.0) / 2)  # the targets' mean WER: the objective
    by_set = m["sets"]
    assert list(by_set) == ["new", "accented", "clean", "noisy"] and all(by_set[n]["set"] == n for n in by_set)
    assert [s["role"] for s in by_set.values()] == ["target", "target", "protected", "protected"]
    assert (by_set["new"]["dev_wer"], by_set["accented"]["dev_wer"]) == (30.0, 50.0)
    assert by_set["clean"]["degradation"] == 0.0 and by_set["clean"]["feasible"]
    assert by_set["noisy"]["degradation"] == pytest.approx(100 * 13 / 80 - 12.5) == pytest.approx(3.75)
    assert not by_set["noisy"]["feasible"] and by_set["noisy"]["limit"] == 2.0
    # the single columns are the binding set's: the one furthest over its limit
    assert m["binding_set"] == "noisy" and m["degradation"] == by_set["noisy"]["degradation"]
    assert m["dev_wer_original"] == by_set["noisy"]["dev_wer"] and m["base_dev_wer_original"] == 12.5
    assert m["feasible"] is False
    # each set's bounds: the paired bootstrap of its own utterances, seeded by seed, step and its place
    low, high = degradation_bounds([2, 3, 1, 1, 3, 1, 1, 1], BASE_B.errors, WORDS, "absolute", 0.9, seed=[7, 40, 1])
    assert (by_set["noisy"]["degradation_lower"], by_set["noisy"]["degradation_upper"]) == (low, high)
    assert (by_set["clean"]["degradation_lower"], by_set["clean"]["degradation_upper"]) == (0.0, 0.0)
    # within both limits: feasible, and the binding set is the one closest to its limit
    m = _measure(limit_a=0.1, limit_b=4.0)
    assert m["feasible"] is True and m["binding_set"] == "clean"  # 0 - 0.1 > 3.75 - 4.0
    assert _measure(limit_a=0.5, limit_b=4.0)["binding_set"] == "noisy"  # 0 - 0.5 < 3.75 - 4.0


def test_feasible_means_feasible_on_every_set_and_the_penalty_sums_their_excess():
    over_both = _measure(limit_a=-1.0, limit_b=2.0)  # clean 0 > -1 and noisy 3.75 > 2
    assert not within_limits(over_both, math.inf)  # a row's own limits, not the one passed
    assert violation(over_both, math.inf) == pytest.approx(1.0 + 1.75)
    assert asha_score_of(over_both, math.inf) == pytest.approx(40.0 + INFEASIBLE_PENALTY * 2.75)
    assert violation(over_both, math.inf, widen=2.0) == pytest.approx((0.0 + 2.0) + max(0.0, 3.75 - 4.0))
    # the winner is feasible on both sets; a trial within the first but over the second never wins
    only_first = {**_measure(limit_a=1.0, limit_b=2.0), "trial_id": "over-noisy", "status": "COMPLETE"}
    both = {**_measure(limit_a=1.0, limit_b=4.0), "trial_id": "within-both", "status": "COMPLETE",
            "dev_wer_new": 45.0}
    assert select_winner([only_first, both], limit=math.inf)["trial_id"] == "within-both"
    assert select_winner([only_first], limit=math.inf) is None
    assert closest_infeasible([only_first, both], limit=math.inf)["trial_id"] == "over-noisy"


def test_new_loops_add_up_over_the_protected_sets():
    m = _measure(limit_a=10.0, limit_b=10.0, looping_b=[0, 1, 0, 0, 0, 0, 0, 0], max_new_loops=0)
    by_set = m["sets"]
    assert (by_set["clean"]["new_loops"], by_set["noisy"]["new_loops"], m["new_loops"]) == (0, 1, 1)
    assert m["feasible"] is False and by_set["noisy"]["feasible"]  # within its limit, but it loops
    assert _measure(limit_a=10.0, limit_b=10.0, looping_b=[0, 1] + [0] * 6, max_new_loops=1)["feasible"] is True


def test_with_upper_each_set_holds_its_upper_bound():
    m = _measure(limit_a=1.0, limit_b=6.0, feasibility="upper")
    noisy = m["sets"]["noisy"]
    assert noisy["held_degradation"] == noisy["degradation_upper"] > noisy["degradation"]


def test_a_protected_dev_set_too_small_to_resolve_its_limit_is_named_with_the_utterances_it_would_need():
    from raysearch_adapters.config import DEMO_CONFIG, load_config
    from raysearch_adapters.search.run import dev_resolution
    from raysearch_adapters.search.summary import format_summary

    sets = 'data.protected=[{name: clean, dev: a.json, test: b.json}, {name: noisy, dev: c.json, test: d.json, kappa: 4}]'
    cfg = load_config([DEMO_CONFIG], ['data.original_dev=""', 'data.original_test=""', sets])

    def first(clean_half, noisy_half):
        return {"eval_index": 1, "sets": [
            {"set": "clean", "role": "protected", "degradation_lower": -clean_half, "degradation_upper": clean_half},
            {"set": "noisy", "role": "protected", "degradation_lower": 1 - noisy_half, "degradation_upper": 1 + noisy_half}]}

    epochs = [first(1.5, 1.0), first(2.0, 2.0), first(3.0, 1.5), {"eval_index": 2, "sets": []}]
    out = dev_resolution(cfg, epochs, {"clean": 60, "noisy": 200})
    # clean: median half-width 2.0 against kappa 1 -> 60 x (2 / 1)^2; noisy (1.5 against 4) resolves its limit
    assert out == {"clean": {"half_width": 2.0, "limit": 1.0, "confidence": 0.95, "utterances": 60, "needed": 240}}
    summary = {"search_id": "s", "baseline": {"dev": {}}, "winner": None, "kappa_mode": "absolute", "trials": {
        "total": 0, "COMPLETE": 0, "PRUNED": 0, "FAIL": 0}, "degradation_limit": 1.0, "interrupted": True,
        "dev_resolution": out, "paths": {"results_dir": "r", "trials": "t", "epochs": "e", "study_storage": "s",
                                         "summary": "j"}}
    assert ("note: the clean dev set (60 utterances) cannot resolve its limit: at the trials' first evaluations the "
            "degradation's 95 % bounds lie 2.00 points from it (median), more than 1; about 240 utterances would "
            "bring them within it") in format_summary(summary)
