"""A search with the adapter type searched, end to end on the small demo corpus (real Ray, Optuna, tiny model)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from builders import types_search_overrides
from raysearch_adapters.adapters.state import load_adapter
from raysearch_adapters.config import ModelConfig, load_config
from raysearch_adapters.export.merged import export
from raysearch_adapters.hparams import applies_to
from raysearch_adapters.models.registry import load_base_model
from raysearch_adapters.results import TRIALS_SCHEMA, read_rows
from raysearch_adapters.results.tables import HPARAM_NAMES
from raysearch_adapters.search import run


@pytest.fixture(scope="module")
def typed(ray_session, search_data, tmp_path_factory):
    """A 4-trial search trying every type (kappa 1000: every measured trial is feasible)."""
    results = tmp_path_factory.mktemp("typed")
    cfg = load_config([], types_search_overrides(*search_data, results, "typed", "search.kappa=1000"))
    return cfg, run.run_search(cfg), results / "typed", search_data[1]


def test_every_row_carries_its_types_parameters_and_nulls_for_the_others(typed):
    _, _, out, checkpoint = typed
    rows = read_rows(out / "trials.parquet", TRIALS_SCHEMA)
    assert len(rows) == 4 and {r["type"] for r in rows} == {"bottleneck", "lora", "parallel"}
    table = pq.read_table(out / "trials.parquet")
    for name in HPARAM_NAMES:  # really null in the file (not a default value)
        assert table.column(name).null_count == sum(not applies_to(name, r["type"]) for r in rows), name
    for r in rows:
        assert r["status"] in ("COMPLETE", "PRUNED"), r.get("error")
        for name in HPARAM_NAMES:
            assert (r[name] is not None) == applies_to(name, r["type"]), (name, r)
        assert r["adapter_params"] > 0 and 0 < r["adapter_percent"] < 100
        # the trial trained what its row says: its adapter file has that type and size
        handle, cfg, _ = load_adapter(f"{r['checkpoint_path']}/best_adapter.pt",
                                      load_base_model(ModelConfig(checkpoint=str(checkpoint))))
        assert cfg.type == r["type"] and handle.num_params == r["adapter_params"]
        if r["type"] == "lora":
            assert (cfg.rank, cfg.alpha, cfg.targets) == (r["rank"], r["alpha"], r["targets"])
        else:
            assert (cfg.dim, cfg.positions) == (r["dim"], [r["position"]])


def test_the_summary_has_the_best_trial_of_each_type_and_the_winner_is_the_best_of_them(typed):
    _, summary, out, _ = typed
    on_disk = json.loads((out / "summary.json").read_text())
    per_type = on_disk["best_per_type"]
    assert set(per_type) <= {"bottleneck", "lora", "parallel"} and per_type
    winner = on_disk["winner"]
    assert winner["hparams"]["type"] in per_type
    assert per_type[winner["hparams"]["type"]]["trial_id"] == winner["trial_id"]
    assert winner["dev"]["new"] == min(b["dev"]["new"] for b in per_type.values())


def test_export_merges_a_lora_winner_and_keeps_any_other_beside_the_base(typed, tmp_path):
    _, summary, out, _ = typed
    record = export(out, tmp_path / "export")
    assert record["type"] == summary["winner"]["hparams"]["type"]
    assert record["merged"] == (record["type"] == "lora")
    if record["merged"]:
        assert all(r["max_abs_output_diff"] <= 1e-5 for r in record["dev"]["fp32"].values())
    else:
        assert (tmp_path / "export" / "adapter.pt").is_file()
