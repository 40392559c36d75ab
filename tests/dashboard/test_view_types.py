"""The dashboard of a search that tried several adapter types: colours by type, LoRA in the placement view,
the best trial per type, the type's own columns."""

from __future__ import annotations

from dash_helpers import METADATA, trial_rows

from raysearch_adapters.dashboard.charts import TYPE_COLORS
from raysearch_adapters.dashboard.page import build_view
from raysearch_adapters.dashboard.png import draw
from raysearch_adapters.results import TRIALS_SCHEMA, write_table

LORA = {"type": "lora", "dim": None, "position": None, "stochastic_depth": None, "l2_lambda": None, "rank": 4,
        "alpha": 8.0, "targets": "q,v"}
TYPES = {"t1": LORA, "t3": LORA, "t4": {"type": "parallel"}}  # the others stay bottleneck


def _typed(results_copy):
    rows = [{**r, **TYPES.get(r["trial_id"], {})} for r in trial_rows()]
    write_table(results_copy / "trials.parquet", rows, TRIALS_SCHEMA, METADATA)
    return build_view(results_copy)


def test_the_tradeoff_colours_each_type_and_the_hover_tells_its_parameters_and_size(results_copy):
    fig = _typed(results_copy)["charts"]["tradeoff"]
    traces = {t["name"]: t for t in fig["data"]}
    assert sorted(traces["lora, feasible"]["x"]) == [0.2, 0.5]  # t3, t1
    assert traces["parallel, feasible"]["x"] == [0.0]  # t4
    assert traces["bottleneck, infeasible"]["x"] == [2.0] and traces["bottleneck, infeasible"]["marker"]["symbol"] == "x"
    assert traces["lora, feasible"]["marker"]["color"] == TYPE_COLORS["lora"]
    assert "LoRA rank 4, alpha 8.0, targets q,v" in traces["lora, feasible"]["text"][0]
    assert "adapter params" in traces["lora, feasible"]["text"][0] and "% of base" in traces["lora, feasible"]["text"][0]
    draw(fig)  # the report's PNG draws the same figure


def test_dim_chart_has_the_bottleneck_types_only_and_placement_shows_lora_targets(results_copy):
    charts = _typed(results_copy)["charts"]
    assert all(x is not None for t in charts["dim"]["data"] for x in t["x"])
    ids = {t["text"][i].split(":")[0].split()[1] for t in charts["dim"]["data"] for i in range(len(t["x"]))}
    assert not ids & {"t1", "t3"}
    names = {t["name"] for t in charts["placement"]["data"]}
    assert {"LoRA on q,v", "parallel at ffn", "position post"} <= names


def test_the_summary_has_the_best_feasible_trial_of_each_type_and_the_table_its_columns(results_copy):
    view = _typed(results_copy)
    per_type = {r["type"]: r for r in view["summary"]["per_type"]}
    assert set(per_type) == {"bottleneck", "lora"}  # parallel's only trial was pruned: it cannot win
    assert per_type["lora"]["trial_id"] == "t1" and per_type["bottleneck"]["trial_id"] == "t6"
    assert per_type["lora"]["hparams"]["rank"] == 4 and "dim" not in per_type["lora"]["hparams"]
    keys = [c["key"] for c in view["trials"]["columns"]]
    assert {"type", "rank", "alpha", "targets"} <= set(keys)
    rows = {r[keys.index("trial_id")]: r for r in view["trials"]["rows"]}
    assert rows["t1"][keys.index("type")] == "lora" and rows["t1"][keys.index("dim")] is None


def test_a_single_type_search_looks_as_before(finished_dir):
    view = build_view(finished_dir)
    assert view["summary"]["per_type"] == []
    assert {t["name"] for t in view["charts"]["tradeoff"]["data"]} >= {"feasible", "infeasible"}
