"""The dashboard's view of a results folder: summary, table, charts; partial, corrupt and empty folders."""

from __future__ import annotations

import json
import math

import pytest
from dash_helpers import METADATA, NUM_BLOCKS, PARETO, TRIALS, WINNER, trial_rows, write_results

from raysearch_adapters.dashboard.page import build_view
from raysearch_adapters.results import TRIALS_SCHEMA, write_table
from raysearch_adapters.results.placement import PlacementError, parse_blocks


def _trace(fig: dict, name: str) -> dict:
    (t,) = [t for t in fig["data"] if t["name"] == name]
    return t


def test_summary_compares_base_model_and_winner_on_dev_and_test(finished_dir):
    view = build_view(finished_dir)
    s = view["summary"]
    assert view["state"] == "finished" and view["errors"] == view["notes"] == []
    base, winner = s["rows"]
    assert base == {"label": "base model", "dev": {"new": 45.0, "original": 10.0},
                    "test": {"new": 47.0, "original": 10.4}}
    assert winner["label"] == f"winner (trial {WINNER})" and winner["test"] == {"new": 19.5, "original": 10.9}
    assert s["sets"] == ["new", "original"]
    assert s["winner"]["adapter_percent"] == pytest.approx(0.8) and s["degradation_limit"] == 1.0
    assert s["counts"] == {"total": 8, "RUNNING": 1, "COMPLETE": 4, "PRUNED": 2, "FAIL": 1}
    assert set(s["versions"]) >= {"torch", "ray", "optuna"}


def test_trial_table_has_every_trial_with_status_and_column_docs(finished_dir):
    t = build_view(finished_dir)["trials"]
    keys = [c["key"] for c in t["columns"]]
    assert {tuple(r[keys.index(k)] for k in ("trial_id", "status")) for r in t["rows"]} == {(x[0], x[5]) for x in TRIALS}
    doc = {c["key"]: c["doc"] for c in t["columns"]}
    assert doc["feasible"] == ("held_degradation <= kappa and new_loops <= search.max_new_loops (unless null); "
                              "best evaluation") and set(keys) <= set(TRIALS_SCHEMA.names)


def test_tradeoff_chart_has_kappa_line_pareto_front_winner_and_base(finished_dir):
    fig = build_view(finished_dir)["charts"]["tradeoff"]
    by_id = {tid: (deg, wer) for tid, *_, wer, deg in TRIALS}
    front = _trace(fig, "Pareto front")
    assert list(zip(front["x"], front["y"])) == [by_id[t] for t in PARETO]
    assert sorted(_trace(fig, "infeasible")["x"]) == [2.0]  # t2 only: degradation 2.0 > kappa 1.0
    assert len(_trace(fig, "feasible")["x"]) == 5 and _trace(fig, "running (latest evaluation)")["y"] == [40.0]
    assert _trace(fig, f"winner (trial {WINNER})")["x"] == [0.9]
    assert _trace(fig, "base model (no adapter)")["y"] == [45.0]
    (line,) = fig["layout"]["shapes"]
    assert line["x0"] == line["x1"] == 1.0


def test_placement_shows_blocks_and_position_of_the_best_trials(finished_dir):
    fig = build_view(finished_dir)["charts"]["placement"]
    cells = {(y.split()[1], x, t["name"]) for t in fig["data"] for x, y in zip(t["x"], t["y"])}
    assert {(tid, b) for tid, b, _ in cells} == {(tid, b) for tid, _, spec, *_ in TRIALS if tid not in ("t7", "t8")
                                                 for b in parse_blocks(spec, NUM_BLOCKS)}
    assert ("t6", 1, "position ffn") in cells and ("t1", 3, "position post") in cells
    # Best first: the feasible winner ranks 1, the infeasible t2 after every feasible trial.
    ranked = fig["layout"]["yaxis"]["categoryarray"]
    assert ranked[0].startswith(f"#1 {WINNER} ") and ranked[-1].startswith("#6 t2 ") and "infeasible" in ranked[-1]


def test_block_specs_parse_without_torch():
    assert parse_blocks("top:2", 4) == [2, 3] and parse_blocks("window:1-3", 4) == [1, 2]
    with pytest.raises(PlacementError, match="model has 4 blocks"):
        parse_blocks("top:5", 4)


def test_hparam_curves_and_importance_charts_have_data(finished_dir):
    charts = build_view(finished_dir)["charts"]
    assert sorted(x for t in charts["dim"]["data"] for x in t["x"]) == sorted(
        d for _, d, *_, wer, _ in TRIALS if wer is not None)
    assert charts["lr"]["layout"]["xaxis"]["type"] == "log"
    curves = {t["name"].split()[0]: t for t in charts["curves_new"]["data"]}
    assert set(curves) == {t[0] for t in TRIALS if t[6] is not None} and curves["t1"]["y"] == [30.0, 25.0, 20.0]
    assert charts["curves_degradation"]["layout"]["shapes"][0]["y0"] == 1.0
    imp = charts["importances"]
    assert set(imp["data"][0]["y"]) == {"dim", "blocks", "position", "lr"}
    assert math.isclose(sum(imp["data"][0]["x"]), 1.0) and "4 complete trials" in imp["note"]


def test_partial_folder_while_searching_shows_best_feasible_so_far(tmp_path):
    d = write_results(tmp_path / "s", summary=False)
    view = build_view(d)
    assert view["state"] == "running" and "summary.json is written when it ends" in view["notes"][0]
    (row,) = view["summary"]["rows"]
    assert row["label"] == f"best feasible so far (trial {WINNER})" and row["test"] == {}
    assert view["charts"]["tradeoff"]["layout"]["shapes"][0]["x0"] == 1.0  # kappa from trials.parquet metadata
    assert "data" in view["charts"]["placement"]


def test_number_of_blocks_and_kappa_come_from_the_summary_when_the_tables_lack_them(results_copy):
    write_table(results_copy / "trials.parquet", trial_rows(), TRIALS_SCHEMA)
    charts = build_view(results_copy)["charts"]
    assert charts["placement"]["layout"]["xaxis"]["range"] == [-0.5, NUM_BLOCKS - 0.5]
    assert charts["tradeoff"]["layout"]["shapes"][0]["x0"] == 1.0


def test_placement_explains_when_the_number_of_blocks_is_unknown(tmp_path):
    d = tmp_path / "s"
    write_table(d / "trials.parquet", trial_rows(), TRIALS_SCHEMA, {"kappa": "1.0"})
    view = build_view(d)
    assert "num_blocks" in view["charts"]["placement"]["message"]
    assert "shapes" not in view["charts"]["tradeoff"]["layout"] or not view["charts"]["tradeoff"]["layout"]["shapes"]
    assert "no optuna.db" in view["charts"]["importances"]["message"]


def test_empty_folder_says_what_is_missing(tmp_path):
    view = build_view(tmp_path)
    assert view["state"] == "empty" and "No results yet" in view["notes"][0] and view["errors"] == []
    assert all("message" in f for f in view["charts"].values()) and view["trials"]["rows"] == []


def test_truncated_parquet_and_bad_json_become_messages(results_copy):
    data = (results_copy / "trials.parquet").read_bytes()
    (results_copy / "trials.parquet").write_bytes(data[: len(data) // 2])
    (results_copy / "summary.json").write_text('{"search_id": "fixture", ')
    view = build_view(results_copy)
    assert view["state"] == "error"
    assert any("trials.parquet" in m and "not a readable Parquet file" in m for m in view["errors"])
    assert any("summary.json: cannot be read" in m for m in view["errors"])
    json.dumps(view, allow_nan=False)  # still valid JSON for the page


def test_nan_values_are_sent_as_null(tmp_path):
    rows = trial_rows()
    rows[0]["dev_wer_new"] = float("nan")
    write_table(tmp_path / "trials.parquet", rows, TRIALS_SCHEMA)
    view = build_view(tmp_path)
    json.dumps(view, allow_nan=False)
    keys = [c["key"] for c in view["trials"]["columns"]]
    (row,) = [r for r in view["trials"]["rows"] if r[keys.index("trial_id")] == rows[0]["trial_id"]]
    assert row[keys.index("dev_wer_new")] is None


def test_corrupt_study_is_a_message_and_the_file_is_untouched(results_copy):
    db = results_copy / "optuna.db"
    db.write_bytes(b"not a database" * 100)
    before = db.read_bytes()
    view = build_view(results_copy)
    assert "cannot compute importances" in view["charts"]["importances"]["message"]
    assert db.read_bytes() == before and view["state"] == "finished"


def test_importances_need_two_complete_trials(tmp_path):
    import optuna

    from raysearch_adapters.dashboard.importance import param_importances

    study = optuna.create_study(study_name="one", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=1)
    imp = param_importances(tmp_path / "optuna.db", "other name: the only study is used")
    assert imp.values == {} and imp.complete_trials == 1 and "need at least 2" in imp.message


def test_placement_draws_an_encoder_decoders_stacks_from_the_layout(tmp_path):
    rows = trial_rows()
    for i, r in enumerate(rows):
        r["blocks"] = ["decoder:all", "encoder:top:1+decoder:top:1"][i % 2]
    metadata = {**METADATA, "num_blocks": "8", "block_stacks": json.dumps([["encoder", 4], ["decoder", 4]])}
    write_table(tmp_path / "s" / "trials.parquet", rows, TRIALS_SCHEMA, metadata)
    chart = build_view(tmp_path / "s")["charts"]["placement"]
    assert "note" not in chart  # every spec read against the two stacks
    assert sorted({x for t in chart["data"] for x in t["x"]}) == [3, 4, 5, 6, 7]
    assert "encoder blocks 0-3 and decoder blocks 4-7" in json.dumps(chart["layout"])
    assert chart["layout"]["xaxis"]["range"] == [-0.5, 7.5]


def test_a_search_whose_trials_within_kappa_all_loop_has_no_winner_and_says_why(tmp_path):
    """Every COMPLETE trial within kappa added a looping original-domain dev transcript (max_new_loops 0): the summary,
    its printed text and the dashboard say there is no feasible trial, and name the loops of the closest."""
    from dash_helpers import BASELINE, LIMIT, SEARCH

    from raysearch_adapters.config import load_config
    from raysearch_adapters.results.select import closest_infeasible, pareto_front, select_winner
    from raysearch_adapters.search.summary import build_summary, format_summary, write_summary

    rows = [{**r, "new_loops": 1 if r["status"] == "COMPLETE" and r["degradation"] <= LIMIT else 0}
            for r in trial_rows() if r["status"] != "RUNNING"]
    for r in rows:
        r["feasible"] = r["feasible"] and not r["new_loops"] if r["degradation"] is not None else None
    cfg = load_config([], [f"search.name={SEARCH}", f"search.kappa={LIMIT}"])
    assert cfg.search.max_new_loops == 0  # the default
    assert select_winner(rows, LIMIT) is not None and select_winner(rows, LIMIT, 0) is None
    closest = closest_infeasible(rows, LIMIT, 0)
    assert closest["trial_id"] == "t3"  # one loop (1 point) ties t2's 1.0 over kappa; t3's degradation is lower
    paths = {"results_dir": str(tmp_path), "trials": "t", "epochs": "e", "study_storage": "s", "summary": "s.json"}
    summary = build_summary(cfg, rows, LIMIT, BASELINE, None, None, closest, pareto_front(rows), paths)
    assert summary["max_new_loops"] == 0 and summary["winner"] is None
    assert summary["no_feasible_trial"]["new_loops"] == 1 and summary["no_feasible_trial"]["loops_over_limit_by"] == 1
    text = format_summary(summary)
    assert ("feasible = original-domain dev degradation <= 1 points, no original-domain dev transcript newly "
            "looping") in text
    assert "at most 2 original-domain dev transcripts newly looping" in format_summary({**summary, "max_new_loops": 2})
    assert "NO FEASIBLE TRIAL: every measured trial degraded the original domain by more than 1 points or newly " \
           "looped on more than 0 of its dev utterances" in text
    assert "closest: trial t3 with degradation +0.20 points (within the limit; 1 newly looping transcript(s), 1 over " \
           "the limit)" in text
    d = tmp_path / "results"
    d.mkdir()
    write_table(d / "trials.parquet", rows, TRIALS_SCHEMA, {**METADATA, "max_new_loops": "0"})
    write_summary(d / "summary.json", summary)
    view = build_view(d)["summary"]
    assert view["max_new_loops"] == 0 and view["winner"] is None
    assert view["note"] == ("no feasible trial: every measured trial degraded the original domain by more than the "
                            "limit or newly looped on more than 0 dev utterance(s); closest: trial t3, degradation "
                            "+0.20, 1 newly looping")
