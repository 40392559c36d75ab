"""The adapter type as a searched dimension: each type's own parameters (define-by-run), start points and the
grid checked against the type, and the model checked for the targets and positions the space can ask for."""

from __future__ import annotations

import pickle

import optuna
import pytest

from builders import tiny_conformer, tiny_search_overrides
from raysearch_adapters.config import ConfigError, load_config
from raysearch_adapters.hparams import TYPE_PARAMS, applies_to
from raysearch_adapters.results.tables import HPARAM_NAMES
from raysearch_adapters.search.preflight import preflight
from raysearch_adapters.search.space import make_sampler, space_function, start_points
from raysearch_adapters.train.hparams import trial_config

TYPED = ["search.space.type=[bottleneck,lora,parallel]", "search.space.rank=[2,4]", "search.space.alpha={value: 8}",
         'search.space.targets=["q,v",all]', "search.space.position=[mha,ffn]", "search.space.stochastic_depth=[0.0,0.1]"]


def _asked(cfg, n: int):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=make_sampler(cfg.search))
    fn = pickle.loads(pickle.dumps(space_function(cfg)))  # Ray checkpoints the searcher with plain pickle
    for point in start_points(cfg.search):
        study.enqueue_trial(point)
    out = []
    for i in range(n):
        trial = study.ask()
        fixed = fn(trial)
        out.append({**fixed, **trial.params})
        study.tell(trial, float(i % 3))
    return out


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_each_trial_has_its_types_parameters_and_none_of_the_others(sampler):
    cfg = load_config([], [*TYPED, f"search.sampler={sampler}", "search.budget_steps=0", "search.num_trials=30"])
    configs = _asked(cfg, 30)
    assert {c["type"] for c in configs} == {"bottleneck", "lora", "parallel"}
    for c in configs:
        assert set(c) >= set(HPARAM_NAMES)
        for name in HPARAM_NAMES:
            assert (c[name] is not None) == applies_to(name, c["type"]), (name, c)
        if c["type"] == "lora":
            assert c["rank"] in (2, 4) and c["alpha"] == 8 and c["targets"] in ("q,v", "all")
        else:
            assert c["dim"] in (32, 64, 128) and c["position"] in ("mha", "ffn") and c["stochastic_depth"] in (0.0, 0.1)
        adapter = trial_config(cfg, c).adapter  # what the trial injects
        assert adapter.type == c["type"] and (adapter.rank == c["rank"] if c["type"] == "lora" else
                                              adapter.dim == c["dim"] and adapter.positions == [c["position"]])


def test_the_demos_space_is_a_bottleneck_space():
    from raysearch_adapters.config import DEMO_CONFIG

    cfg = load_config([DEMO_CONFIG])
    (c,) = _asked(cfg, 1)
    assert c["type"] == "bottleneck" and c["rank"] is c["alpha"] is c["targets"] is None and c["dim"] == 64
    assert set(TYPE_PARAMS["lora"]).isdisjoint(_asked(cfg, 1)[0].keys() - set(HPARAM_NAMES))


def test_start_points_of_each_type_are_tried_first():
    cfg = load_config([], [*TYPED, "search.start_points=[{type: lora, rank: 4, targets: all}, {type: parallel, dim: 32}]"])
    first, second = _asked(cfg, 2)
    assert (first["type"], first["rank"], first["targets"], first["dim"]) == ("lora", 4, "all", None)
    assert (second["type"], second["dim"], second["rank"]) == ("parallel", 32, None)


@pytest.mark.parametrize("point,message", [
    ("{type: lora, dim: 32}", r"search.start_points\[0\].dim: got 32; a parameter of bottleneck/parallel adapters; "
                              r"this point's type is lora"),
    ("{dim: 32}", r"search.start_points\[0\].dim: got 32; a parameter of bottleneck/parallel adapters, and "
                  r"search.space.type is searched: give the point's type too"),
    ("{type: conv}", r"search.start_points\[0\].type: got 'conv'; allowed: bottleneck, lora, parallel"),
])
def test_a_start_point_must_fit_its_type(point, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], [*TYPED, f"search.start_points=[{point}]"])


@pytest.mark.parametrize("overrides,message", [
    (["search.sampler=grid", "adapter.type=lora"], r"search.sampler: got 'grid'; the NeMo-style grid sweeps dim and "
                                                   r"stochastic_depth, which lora adapters do not have"),
    (["search.space.rank=0"], r"search.space.rank.value: got 0; must be a whole number >= 1"),
    (["search.space.rank={low: 0, high: 8}"], r"search.space.rank.low: got 0.0; must be a whole number >= 1"),
    (["search.space.alpha=[0, 8]"], r"search.space.alpha.choices\[0\]: got 0; must be a number > 0"),
    (["search.space.type=[bottleneck,adapterfusion]"], r"search.space.type.choices\[1\]: got 'adapterfusion'; "
                                                       r"allowed: bottleneck, lora, parallel"),
    (['search.space.targets=["q,q"]'], r"search.space.targets.choices\[0\]: got 'q,q'; a targets spec \(a target is "
                                       r"listed twice\)"),
    (["adapter.rank=0"], r"adapter.rank: got 0; must be a whole number >= 1"),
    (["adapter.type=lora", "adapter.l2_lambda=0.1"], r"adapter.l2_lambda: got 0.1; has no effect on type lora"),
])
def test_bad_type_values_fail_at_load_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], overrides)


@pytest.fixture(scope="module")
def overrides_for(search_data, tmp_path_factory):
    corpus, checkpoint, cache = search_data
    return lambda *extra: tiny_search_overrides(corpus, checkpoint, cache, tmp_path_factory.mktemp("types"), "t",
                                                *extra)


def test_preflight_checks_the_targets_and_positions_each_searched_type_can_ask_for(overrides_for, monkeypatch):
    model = tiny_conformer(seed=0, num_layers=2)
    preflight(load_config([], overrides_for(*TYPED)), model)
    with pytest.raises(ConfigError, match=r"search.space.targets / adapter.targets: got 'q,query'; model conformer_ctc "
                                          r"has no linear layer 'query' in every block; it has: .*ffn_in.* \(or: all\)"):
        preflight(load_config([], overrides_for(*TYPED, 'search.space.targets=["q,query"]')), model)
    # a backbone whose blocks offer a parallel branch beside the feed-forward only
    import dataclasses

    limited = [dataclasses.replace(b, parallel={"ffn": "x"}) for b in model.adaptable_blocks()]
    monkeypatch.setattr(model, "adaptable_blocks", lambda: limited)
    with pytest.raises(ConfigError, match=r"search.space.position / adapter.positions: got 'mha'; model conformer_ctc "
                                          r"has the parallel positions ffn in every block"):
        preflight(load_config([], overrides_for(*TYPED)), model)
    preflight(load_config([], overrides_for(*TYPED, "search.space.type=[bottleneck,lora]")), model)
