"""``search.feasibility=upper``: a trial whose degradation is within kappa but whose upper confidence bound is not
is infeasible for Optuna, the trials' ASHA score, the tables, summary.json and the dashboard alike."""

from __future__ import annotations

import json

import optuna
import pytest
from ray import tune

from builders import demo_model_search_overrides
from raysearch_adapters.config import ConfigError, load_config
from raysearch_adapters.dashboard.page import build_view
from raysearch_adapters.results.tables import EPOCHS_SCHEMA, TRIALS_SCHEMA, read_rows
from raysearch_adapters.search import run
from raysearch_adapters.search.searcher import TUNE_TRIAL_ID
from raysearch_adapters.train.objective import INFEASIBLE_PENALTY


def test_a_trial_feasible_by_its_degradation_but_not_by_its_upper_bound_is_infeasible_everywhere(
        demo_model_search, small_demo, tmp_path_factory):
    # The point search (kappa 1000: every trial feasible) measured every evaluation's degradation and bounds.
    point_cfg, _, point_dir = demo_model_search
    numbers = {r["trial_id"]: r["trial_number"] for r in read_rows(point_dir / "trials.parquet", TRIALS_SCHEMA)}
    evals: dict = {}
    for e in read_rows(point_dir / "epochs.parquet", EPOCHS_SCHEMA):
        assert e["degradation_lower"] <= e["degradation"] <= e["degradation_upper"]
        evals.setdefault(numbers[e["trial_id"]], []).append(e)
    # A kappa that some evaluation of a trial meets by its estimate but none by its upper bound.
    gaps = {n: (min(e["degradation"] for e in es), min(e["degradation_upper"] for e in es)) for n, es in evals.items()}
    number, (lowest, lowest_upper) = max(gaps.items(), key=lambda kv: kv[1][1] - kv[1][0])
    assert lowest_upper > lowest + 0.05, gaps
    kappa = (lowest + lowest_upper) / 2

    # The same search (same seed, trials and evaluations) holding the upper bound to that kappa.
    root = point_dir.parent
    cfg = load_config([], demo_model_search_overrides(small_demo, root / "features", root, "upper",
                                                      "search.feasibility=upper", "search.confidence=0.95",
                                                      f"search.kappa={kappa}"))
    summary = run.run_search(cfg)
    out = root / "upper"
    rows = {r["trial_number"]: r for r in read_rows(out / "trials.parquet", TRIALS_SCHEMA)}
    row = rows[number]
    # its result is its least infeasible evaluation: the lowest upper bound, over kappa
    assert row["feasible"] is False and row["held_degradation"] == row["degradation_upper"] == lowest_upper > kappa
    # every evaluation of every trial: feasible exactly when its upper bound is within kappa
    again = read_rows(out / "epochs.parquet", EPOCHS_SCHEMA)
    assert sorted(e["degradation_upper"] for e in again) == sorted(e["degradation_upper"] for es in evals.values()
                                                                   for e in es)  # the same evaluations
    for e in again:
        assert e["held_degradation"] == e["degradation_upper"] and e["feasible"] == (e["degradation_upper"] <= kappa)

    # Optuna: the constraint is the upper bound over kappa (> 0: infeasible, never the study's best)
    study = optuna.load_study(study_name="upper", storage=f"sqlite:///{out / 'optuna.db'}")
    ot = next(t for t in study.trials if t.user_attrs.get(TUNE_TRIAL_ID) == row["trial_id"])
    assert ot.system_attrs["constraints:degradation"] == pytest.approx(row["degradation_upper"] - kappa)
    assert ot.system_attrs["constraints:degradation"] > 0
    assert ot.user_attrs["held_degradation"] == row["degradation_upper"]
    # the trials' ASHA score prices the upper bound's excess
    results = {t.last_result["dev_wer_new"]: t.last_result for t in tune.ExperimentAnalysis(str(out / "tune")).trials}
    last = results[row["dev_wer_new"]]
    assert last["asha_score"] == pytest.approx(row["dev_wer_new"] + INFEASIBLE_PENALTY * (row["degradation_upper"] - kappa))

    # summary.json: the trial does not win; the rule and the bounds are stated
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary, default=str))
    assert (saved["feasibility"], saved["confidence"]) == ("upper", 0.95)
    winner = saved["winner"]
    assert winner is None or winner["dev"]["new"] != row["dev_wer_new"]
    if winner is not None:
        assert winner["held_degradation"] == winner["degradation_upper"] <= kappa
        assert winner["test_degradation_lower"] <= winner["test_degradation"] <= winner["test_degradation_upper"]
    else:
        assert saved["no_feasible_trial"]["over_limit_by"] > 0

    # the dashboard: infeasible in the table and the trade-off chart, the rule in the summary panel
    view = build_view(out)
    keys = [c["key"] for c in view["trials"]["columns"]]
    shown = next(r for r in view["trials"]["rows"] if r[keys.index("trial_id")] == row["trial_id"])
    assert shown[keys.index("feasible")] is False and shown[keys.index("degradation_upper")] == row["degradation_upper"]
    infeasible = next(t for t in view["charts"]["tradeoff"]["data"] if t["name"] == "infeasible")
    # the charts' coordinates are rounded to 6 significant digits (dashboard.charts)
    i = next(i for i, x in enumerate(infeasible["x"]) if x == pytest.approx(row["degradation"], rel=1e-5))
    assert infeasible["error_x"]["array"][i] == pytest.approx(row["degradation_upper"] - row["degradation"], rel=1e-5)
    assert (view["summary"]["feasibility"], view["summary"]["confidence"]) == ("upper", 0.95)


def test_the_point_search_reports_bounds_of_the_winner_on_dev_and_test(demo_model_search, capsys):
    cfg, summary, out = demo_model_search
    w = summary["winner"]
    assert summary["feasibility"] == "point" and w["held_degradation"] == w["degradation"]
    assert w["degradation_lower"] <= w["degradation"] <= w["degradation_upper"]
    assert w["test_degradation_lower"] <= w["test_degradation"] <= w["test_degradation_upper"]
    from raysearch_adapters.search.summary import format_summary
    text = format_summary(summary)
    assert (f"degradation {w['degradation']:+.2f} [{w['degradation_lower']:+.2f}, {w['degradation_upper']:+.2f}] "
            "points on dev") in text
    assert "one-sided 95 % confidence bounds (paired bootstrap over utterances)" in text
    # looping transcripts: counted per model, split and domain from hypotheses.parquet, and printed
    from raysearch_adapters.results.hypotheses import HYPOTHESES_SCHEMA, loop_counts
    rows = read_rows(out / "hypotheses.parquet", HYPOTHESES_SCHEMA)
    assert all(isinstance(r["base_looping"], bool) and isinstance(r["winner_looping"], bool) for r in rows)
    assert summary["loops"] == loop_counts(rows) and set(summary["loops"]) == {"base", "winner", "new"}
    assert set(summary["loops"]["winner"]) == {"dev", "test"}
    assert "looping transcripts (zlib compression ratio > 2.4), new/original domain: base model dev " in text


@pytest.mark.parametrize("override, message", [
    ("search.confidence=0.5", r"^search\.confidence: got 0\.5; must be > 0\.5 and < 1$"),
    ("search.confidence=1.0", r"^search\.confidence: got 1\.0; must be > 0\.5 and < 1$"),
    ("search.feasibility=lower", r"^search\.feasibility: got 'lower'; allowed: point, upper$"),
])
def test_bad_feasibility_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], [override])
