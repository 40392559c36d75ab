"""Two new-domain targets and two protected sets, each with its own limit, in a real search (Ray, Optuna, the demo
base model on the small demo corpus): the objective is the targets' mean WER, only the second protected set binds,
and the winner is feasible on both; every table, the summary, the study and the dashboard name each set."""

from __future__ import annotations

import json

import optuna
import pytest

from builders import demo_model_search_overrides
from raysearch_adapters.config import load_config
from raysearch_adapters.dashboard.page import build_view
from raysearch_adapters.results import EPOCHS_SCHEMA, TRIALS_SCHEMA, read_rows
from raysearch_adapters.results.hypotheses import HYPOTHESES_SCHEMA
from raysearch_adapters.results.tables import read_table
from raysearch_adapters.search import run
from raysearch_adapters.search.summary import format_summary


def _halves(manifest, out_dir, names):
    """The manifest's first and second halves as two manifests (audio paths made absolute)."""
    lines = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for line in lines:
        line["audio_filepath"] = str((manifest.parent / line["audio_filepath"]).resolve())
    half = len(lines) // 2
    paths = []
    for name, part in zip(names, (lines[:half], lines[half:])):
        path = out_dir / f"{name}-{manifest.stem}.json"
        path.write_text("".join(json.dumps(line) + "\n" for line in part))
        paths.append(path)
    return paths


def _sets_overrides(corpus, tmp, kappas):
    """Targets n1, n2 (the new domain's dev and test halves) and protected sets a, b (the original domain's), in the
    order and with the kappas of ``kappas`` ({name: kappa})."""
    sets = {}
    for domain, names in (("new", ("n1", "n2")), ("original", ("a", "b"))):
        dev, test = (_halves(corpus / domain / f"{split}.json", tmp, names) for split in ("dev", "test"))
        sets[domain] = {n: {"name": n, "dev": str(d), "test": str(t)} for n, d, t in zip(names, dev, test)}
    protected = [{**sets["original"][n], "kappa": k} for n, k in kappas.items()]
    return ['data.new_dev=""', 'data.new_test=""', 'data.original_dev=""', 'data.original_test=""',
            f"data.targets={json.dumps(list(sets['new'].values()))}", f"data.protected={json.dumps(protected)}"]


def _search(corpus, root, name, kappas):
    cfg = load_config([], demo_model_search_overrides(corpus, root / "features", root, name,
                                                      *_sets_overrides(corpus, root, kappas)))
    return cfg, run.run_search(cfg), root / name


@pytest.fixture(scope="module")
def free_run(ray_session, small_demo, tmp_path_factory):
    """Both sets with kappa 1000: every evaluation feasible; what each set's degradation was."""
    return _search(small_demo, tmp_path_factory.mktemp("sets"), "free", {"a": 1000.0, "b": 1000.0})


def test_a_two_set_search_where_only_the_second_set_binds_picks_a_winner_feasible_on_both(free_run, small_demo):
    cfg, free, out = free_run
    epochs = read_rows(out / "epochs.parquet", EPOCHS_SCHEMA)
    assert {s["set"] for e in epochs for s in e["sets"]} == {"n1", "n2", "a", "b"}
    for e in epochs:  # the objective is the targets' mean dev WER
        by_set = {s["set"]: s for s in e["sets"]}
        assert e["dev_wer_new"] == pytest.approx((by_set["n1"]["dev_wer"] + by_set["n2"]["dev_wer"]) / 2)
    degradations = {name: {(e["trial_id"], e["step"]): next(s["degradation"] for s in e["sets"] if s["set"] == name)
                           for e in epochs} for name in ("a", "b")}
    # The free run's winner is its best evaluation by WER: a kappa under its degradation of one set, over that set's
    # least degraded evaluation, makes that set bind. It goes second, the other first with kappa 1000.
    w = free["winner"]
    gaps = {name: (d[(w["trial_id"], w["best_step"])], min(d.values())) for name, d in degradations.items()}
    binding = max(gaps, key=lambda n: gaps[n][0] - gaps[n][1])
    other = "b" if binding == "a" else "a"
    chosen, lowest = gaps[binding]
    assert chosen > lowest + 0.5, f"the free winner is the least degraded evaluation of both sets: {degradations}"
    kappa = (lowest + chosen) / 2

    root = out.parent
    cfg, summary, out = _search(small_demo, root, "bound", {other: 1000.0, binding: kappa})
    rows = {r["trial_id"]: r for r in read_rows(out / "trials.parquet", TRIALS_SCHEMA)}
    w = summary["winner"]
    assert w is not None and (w["trial_id"], w["best_step"]) != (free["winner"]["trial_id"],
                                                                 free["winner"]["best_step"])
    winner_sets = {s["set"]: s for s in rows[w["trial_id"]]["sets"]}
    assert winner_sets["a"]["feasible"] and winner_sets["b"]["feasible"]
    assert winner_sets[binding]["held_degradation"] <= kappa == winner_sets[binding]["limit"]
    # every evaluation over kappa on the second set is infeasible, and that set is what binds it
    for e in read_rows(out / "epochs.parquet", EPOCHS_SCHEMA):
        held = next(s for s in e["sets"] if s["set"] == binding)
        assert e["feasible"] == (held["degradation"] <= kappa)
        if not e["feasible"]:
            assert e["binding_set"] == binding and e["degradation"] == held["degradation"]

    # summary.json and the printed summary name each set
    assert [s["set"] for s in summary["sets"]] == ["n1", "n2", other, binding]
    assert set(w["dev"]) == set(w["test"]) == {"n1", "n2", "a", "b"}
    assert set(w["protected"]) == {"a", "b"}
    assert all(p["test_degradation"] is not None and p["test_degradation_upper"] is not None
               for p in w["protected"].values())
    assert w["protected"][binding]["limit"] == pytest.approx(kappa)
    text = format_summary(summary)
    assert "dev n1" in text and f"test {binding}" in text
    assert f"  {binding}: degradation " in text and f"(limit {kappa:g})" in text
    # Optuna: one constraint per protected set, each against its own limit
    study = optuna.load_study(study_name="bound", storage=f"sqlite:///{out / 'optuna.db'}")
    for t in study.trials:
        row = rows[t.user_attrs["tune_trial_id"]]
        by_set = {s["set"]: s for s in row["sets"]}
        assert t.system_attrs[f"constraints:degradation:{binding}"] == pytest.approx(
            by_set[binding]["held_degradation"] - kappa)
        assert t.system_attrs[f"constraints:degradation:{other}"] == pytest.approx(
            by_set[other]["held_degradation"] - 1000.0)
    # the transcripts of every set, dev and test
    domains = set(read_table(out / "hypotheses.parquet", HYPOTHESES_SCHEMA).column("domain").to_pylist())
    assert domains == {"n1", "n2", "a", "b"}
    # the dashboard: the summary table's columns and the trial table's per-set column
    view = build_view(out)
    assert view["summary"]["sets"] == ["n1", "n2", other, binding]
    keys = [c["key"] for c in view["trials"]["columns"]]
    assert "binding_set" in keys and "sets" in keys
    texts = [r[keys.index("sets")] for r in view["trials"]["rows"]]
    assert all(t.startswith(f"{other} ") and f", {binding} " in t for t in texts)
