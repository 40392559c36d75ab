"""The typed config, its errors, and the CLI skeleton."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raysearch_adapters.cli import main
from raysearch_adapters.config import ConfigError, load_config

SUBCOMMANDS = ("demo-data", "pretrain", "evaluate", "search", "submit", "dashboard", "report", "config")


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "raysearch_adapters.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert f"    {name}" in out
    for name in SUBCOMMANDS:
        sub = subprocess.run([sys.executable, "-m", "raysearch_adapters.cli", name, "--help"],
                             capture_output=True, text=True)
        assert sub.returncode == 0 and "usage: raysearch-adapters " + name in sub.stdout


def test_config_show_merges_file_and_override(capsys):
    assert main(["config", "show", "conf/demo.yaml", "search.num_trials=4"]) == 0
    out = capsys.readouterr().out
    assert "  num_trials: 4\n" in out and "sampler: tpe" in out


def test_misspelt_key_is_named_with_a_suggestion(capsys):
    assert main(["config", "show", "conf/demo.yaml", "search.num_trails=4"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'search.num_trails'" in err and "did you mean 'search.num_trials'?" in err
    assert err.count("\n") == 1  # one line


def test_negative_learning_rate_bound_names_the_key():
    with pytest.raises(ConfigError, match=r"^search\.space\.lr\.low: got -0\.001; must be > 0"):
        load_config(overrides=["search.space.lr.low=-0.001"])
    with pytest.raises(ConfigError, match=r"^train\.lr: got -1\.0; must be > 0"):
        load_config(overrides=["train.lr=-1"])


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", r"train\.lr: Value 'abc' of type 'str' could not be converted to Float"),
    ("search.sampler=bayes", r"search\.sampler: got 'bayes'; allowed: tpe, random, grid, nsga2"),
    ("model.conformer.num_heads=5", r"model\.conformer\.num_heads: got 5; must divide d_model \(128\)"),
    ("search.space.dim.low=4", r"search\.space\.dim: .*give exactly one of value, choices, or low and high"),
    ("resources.num_workers=2", None),
    ("nonsense", r"override 'nonsense': expected key=value"),
])
def test_bad_values_fail_naming_key_value_and_allowed(override, message):
    if message is None:
        load_config(overrides=[override])  # valid
        return
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_inconsistent_gpu_sharing_with_ddp_is_refused():
    with pytest.raises(ConfigError, match=r"resources\.num_workers: got 2; must be 1 when gpus_per_worker < 1"):
        load_config(overrides=["resources.use_gpu=true", "resources.gpus_per_worker=0.25",
                               "resources.num_workers=2"])


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  num_trials: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config([bad])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("search:\n  kapa: 2\n")
    with pytest.raises(ConfigError, match=r"unknown\.yaml: unknown key 'search\.kapa'; did you mean 'search\.kappa'"):
        load_config([unknown])
    with pytest.raises(ConfigError, match="missing.yaml: not found"):
        load_config([tmp_path / "missing.yaml"])
