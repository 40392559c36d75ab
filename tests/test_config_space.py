"""Search-space entries in YAML files and on the command line: given whole they replace the default
entry, given by field they change it; every value is checked against what its hyperparameter takes."""

from __future__ import annotations

import dataclasses

import pytest

from builders import tiny_search_overrides
from raysearch_adapters.commands.main import main
from raysearch_adapters.config import ConfigError, ParamSpec, SpaceConfig, load_config
from raysearch_adapters.hparams import value_problem


@pytest.mark.parametrize("override, name, expected", [
    ("search.space.dim={value: 64}", "dim", ParamSpec(value=64)),
    ("search.space.dim=64", "dim", ParamSpec(value=64)),
    ("search.space.dim=[8,16]", "dim", ParamSpec(choices=[8, 16])),
    ("search.space.dim={low: 4, high: 64, log: true}", "dim", ParamSpec(low=4, high=64, log=True)),
    ("search.space.lr={low: 1e-4, high: 1e-2}", "lr", ParamSpec(low=1e-4, high=1e-2)),  # log is not kept either
    ("search.space.blocks=top:2", "blocks", ParamSpec(value="top:2")),
    ("search.space.dim=null", "dim", ParamSpec()),  # unset: adapter.dim
    ("search.space={dim: 8}", "dim", ParamSpec(value=8)),
])
def test_an_entry_given_whole_replaces_the_default_entry(override, name, expected):
    space = load_config([], [override]).search.space
    assert getattr(space, name) == expected
    assert space.position == SpaceConfig().position  # the other entries keep their defaults


def test_a_field_override_changes_one_field_of_the_entry():
    space = load_config([], ["search.space.dim.choices=[2,4]", "search.space.lr.low=1e-4"]).search.space
    assert space.dim == ParamSpec(choices=[2, 4])
    assert space.lr == ParamSpec(low=1e-4, high=8e-3, log=True)
    tiny = load_config([], tiny_search_overrides("c", "m.pt", "cache", "results", "t")).search.space
    assert tiny.blocks.choices == ["all", "top:1"] and tiny.position.choices == ["post", "ffn"]


def test_a_yaml_entry_given_whole_needs_no_nulls_and_a_later_file_replaces_it(tmp_path):
    first = tmp_path / "first.yaml"
    first.write_text("search:\n  space:\n    dim: {low: 4, high: 64}\n    lr: {value: 0.001}\n"
                     "    position: ffn\n    blocks: [all, 'top:2']\n")
    space = load_config([first]).search.space
    assert space.dim == ParamSpec(low=4, high=64) and space.lr == ParamSpec(value=0.001)
    assert space.position == ParamSpec(value="ffn") and space.blocks == ParamSpec(choices=["all", "top:2"])
    second = tmp_path / "second.yaml"
    second.write_text("search:\n  space:\n    dim: {choices: [8]}\n")
    assert load_config([first, second]).search.space.dim == ParamSpec(choices=[8])


# Each: an override, the start of its one-line error (key and value) and what is allowed.
WRONG_VALUES = [
    ("search.space.dim={choices: null, value: abc}", "search.space.dim.value: got 'abc'", "a whole number >= 1"),
    ("search.space.dim=[4, 8, 2.5]", "search.space.dim.choices[2]: got 2.5", "a whole number >= 1"),
    ("search.space.dim={low: 4.5, high: 64}", "search.space.dim.low: got 4.5", "a whole number >= 1"),
    ("search.space.steps=0", "search.space.steps.value: got 0", "a whole number >= 1"),
    ("search.space.lr=[0.001, -1]", "search.space.lr.choices[1]: got -1", "a number > 0"),
    ("search.space.lr={low: 0, high: 0.01, log: true}", "search.space.lr.low: got 0.0", "a number > 0"),
    ("search.space.l2_lambda={low: 0, high: 0.1, log: true}", "search.space.l2_lambda.low: got 0.0",
     "> 0 (log scale)"),
    ("search.space.dropout=1.0", "search.space.dropout.value: got 1.0", "a number in [0, 1)"),
    ("search.space.stochastic_depth=[0.1, -0.1]", "search.space.stochastic_depth.choices[1]: got -0.1",
     "a number in [0, 1)"),
    ("search.space.l2_lambda={low: -1, high: 1}", "search.space.l2_lambda.low: got -1.0", "a number >= 0"),
    ("search.space.weight_decay=abc", "search.space.weight_decay.value: got 'abc'", "a number >= 0"),
    ("search.space.blocks=3", "search.space.blocks.value: got 3", "quote a single block"),
    ("search.space.blocks=[all, 'top:0']", "search.space.blocks.choices[1]: got 'top:0'", "K must be >= 1"),
    ("search.space.blocks=first:2", "search.space.blocks.value: got 'first:2'", "not a block-set spec"),
    ("search.space.blocks={low: 1, high: 3}", "search.space.blocks: got", "takes a value or choices"),
    ("search.space.position=middle", "search.space.position.value: got 'middle'", "allowed: post, mha, ffn"),
    ("search.space.position={low: 1, high: 2}", "search.space.position: got", "takes a value or choices"),
    ("search.space.specaugment=[true, maybe]", "search.space.specaugment.choices[1]: got 'maybe'",
     "true or false"),
    ("search.space.dim={value: 8, choices: [4]}", "search.space.dim: got", "give exactly one of"),
    ("search.grid.lr=[0.001, 0]", "search.grid.lr[1]: got 0.0", "a number > 0"),
    ("search.grid.stochastic_depth=[0.0, 1.0]", "search.grid.stochastic_depth[1]: got 1.0", "[0, 1)"),
    ("search.grid.dim=[8, 0]", "search.grid.dim[1]: got 0", "a whole number >= 1"),
    ("adapter.blocks=window:3-1", "adapter.blocks: got 'window:3-1'", "need A < B"),
]


@pytest.mark.parametrize("override, found, allowed", WRONG_VALUES, ids=[w[0] for w in WRONG_VALUES])
def test_a_value_of_the_wrong_kind_fails_at_load_naming_key_value_and_allowed(override, found, allowed):
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    msg = str(err.value)
    assert msg.startswith(found) and allowed in msg and "\n" not in msg


def test_the_cli_reports_a_wrong_value_in_one_line(capsys):
    assert main(["config", "show", "search.space.dim={value: abc}"]) == 2
    err = capsys.readouterr().err
    assert err == "raysearch-adapters config: error: search.space.dim.value: got 'abc'; must be a whole number >= 1\n"


def test_every_space_entry_has_a_rule_and_the_defaults_pass_it():
    for f in dataclasses.fields(SpaceConfig):
        spec = getattr(SpaceConfig(), f.name)
        for v in [spec.value] if spec.kind() == "value" else spec.choices or []:
            assert value_problem(f.name, v) is None
