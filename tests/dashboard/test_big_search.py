"""A search of thousands of trials: the view carries the learning curves and table rows of the best trials (as the
search ranks them), every trial in the scatter charts, and stays small."""

from __future__ import annotations

import json

import pytest
from dash_helpers import SEARCH, write_big_results

from raysearch_adapters.commands.main import parse_args
from raysearch_adapters.dashboard.data import ViewLimits
from raysearch_adapters.dashboard.page import build_view
from raysearch_adapters.results import EPOCHS_SCHEMA, TRIALS_SCHEMA, read_rows

TRIALS = 2000


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    return write_big_results(tmp_path_factory.mktemp("big") / SEARCH, TRIALS, study=False)


@pytest.fixture(scope="module")
def view(big_dir):
    return build_view(big_dir)


def _best(big_dir) -> list:
    """The measured trials, best first, ranked here from the file: feasible first, then by dev new WER."""
    rows = read_rows(big_dir / "trials.parquet", TRIALS_SCHEMA)
    done = [r for r in rows if r["status"] in ("COMPLETE", "PRUNED")]
    return sorted(done, key=lambda r: (not r["feasible"], r["dev_wer_new"]))


def test_learning_curves_are_those_of_the_best_trials(big_dir, view):
    best = [r["trial_id"] for r in _best(big_dir)]
    epochs = read_rows(big_dir / "epochs.parquet", EPOCHS_SCHEMA)
    evaluated = len({e["trial_id"] for e in epochs})
    n = ViewLimits().curves
    for key in ("curves_new", "curves_degradation"):
        fig = view["charts"][key]
        assert [t["name"].split()[0] for t in fig["data"]] == best[:n], key
        assert fig["layout"]["title"]["text"].endswith(f"(top {n} of {evaluated:,} trials)")
    first = sorted((e for e in epochs if e["trial_id"] == best[0]), key=lambda e: e["eval_index"])
    assert view["charts"]["curves_new"]["data"][0]["y"] == [e["dev_wer_new"] for e in first]
    fewer = build_view(big_dir, limits=ViewLimits(curves=3))["charts"]["curves_new"]
    assert [t["name"].split()[0] for t in fewer["data"]] == best[:3] and "top 3 of" in fewer["layout"]["title"]["text"]


def test_trial_table_carries_the_best_rows_and_says_of_how_many(big_dir, view):
    best = [r["trial_id"] for r in _best(big_dir)]
    t = view["trials"]
    keys = [c["key"] for c in t["columns"]]
    k = ViewLimits().rows
    assert [r[keys.index("trial_id")] for r in t["rows"]] == best[:k] and t["total"] == TRIALS
    assert t["note"] == (f"showing the best {k:,} of {TRIALS:,} trials (feasible first, then by new-domain dev WER); "
                         "the full table is trials.parquet")
    small = build_view(big_dir, limits=ViewLimits(rows=TRIALS))["trials"]
    assert len(small["rows"]) == TRIALS and small["note"] is None


def test_scatter_charts_keep_every_trial(big_dir, view):
    done = _best(big_dir)
    for key in ("tradeoff", "dim", "lr"):
        points = [x for t in view["charts"][key]["data"] if t["name"] in ("feasible", "infeasible") for x in t["x"]]
        assert len(points) == len(done), key
    (infeasible,) = [t for t in view["charts"]["tradeoff"]["data"] if t["name"] == "infeasible"]
    # to 6 significant digits
    assert sorted(infeasible["x"]) == pytest.approx(sorted(r["degradation"] for r in done if not r["feasible"]), rel=1e-5)


def test_the_view_of_thousands_of_trials_stays_small(view):
    # 2,000 trials: under 800 bytes a trial (a view with every curve and every table row took 1,500)
    assert len(json.dumps(view, allow_nan=False)) < 800 * TRIALS


def test_the_commands_default_to_the_views_limits():
    for command in ("dashboard", "report"):
        args = parse_args([command, "results/x"])
        assert ViewLimits(curves=args.curves, rows=args.rows) == ViewLimits()
