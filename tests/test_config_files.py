"""Config files: what a config without data or model says, and ``extends:`` (a file on top of the demo or of
another file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raysearch_adapters.commands.main import main
from raysearch_adapters.config import DEMO_CONFIG, ConfigError, ModelConfig, load_config
from raysearch_adapters.models.registry import load_base_model

REPO_CONF = Path(__file__).resolve().parent.parent / "conf"


def test_the_defaults_name_no_data_and_no_model_the_demo_file_does():
    bare = load_config([])
    assert (bare.data.demo_dir, bare.data.new_train, bare.data.original_dev, bare.model.checkpoint) == ("", "", "", "")
    demo = load_config([DEMO_CONFIG])
    assert demo.data.new_train == f"{demo.data.demo_dir}/new/train.json" and demo.model.checkpoint == "demo"
    assert demo.data.replay_manifest == demo.data.original_train  # the pools follow the original training set


def test_a_model_without_a_checkpoint_is_refused_naming_what_its_backbone_takes():
    with pytest.raises(ConfigError, match=r"^model\.checkpoint: not set; model\.name=conformer_ctc takes 'demo' \(the "
                                          r"model shipped with the package\) or a checkpoint file"):
        load_base_model(ModelConfig())
    with pytest.raises(ConfigError, match=r"^model\.checkpoint: not set; model\.name=whisper takes a folder written by "
                                          r"save_pretrained or a Hugging Face hub id"):
        load_base_model(ModelConfig(name="whisper"))


def test_a_search_of_a_config_without_data_names_the_first_missing_manifest_and_writes_nothing(tmp_path, capsys):
    conf = tmp_path / "mine.yaml"
    conf.write_text(f"model: {{checkpoint: demo}}\nresults: {{dir: {tmp_path / 'results'}}}\n"
                    "data: {new_train: '', cache_dir: " + str(tmp_path / "cache") + "}\n")
    assert main(["search", str(conf)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"data\.new_train: not set; a search needs the new domain's training set: a \.json/\.jsonl or "
                     r"\.parquet manifest", err), err
    assert not (tmp_path / "results").exists()


def test_a_file_extends_the_demo_and_gives_only_what_differs(tmp_path):
    conf = tmp_path / "mine.yaml"
    conf.write_text("extends: demo\nsearch: {name: mine, kappa: 0.5}\n")
    cfg, demo = load_config([conf]), load_config([DEMO_CONFIG])
    assert cfg.search.name == "mine" and cfg.search.kappa == 0.5
    assert cfg.data == demo.data and cfg.model == demo.model and cfg.search.start_points == demo.search.start_points
    # the shipped configs built on the demo
    for name in ("types", "whisper", "whisper_lora", "nemo_demo"):
        assert load_config([REPO_CONF / f"{name}.yaml"]).data.new_train == demo.data.new_train, name


def test_a_file_extends_another_relative_to_itself_in_a_chain(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "team.yaml").write_text("extends: demo\nsearch: {kappa: 0.5, name: team}\n")
    (tmp_path / "mine.yaml").write_text("extends: base/team.yaml\nsearch: {name: mine}\n")
    cfg = load_config([tmp_path / "mine.yaml"], ["search.seed=3"])
    assert (cfg.search.name, cfg.search.kappa, cfg.search.seed, cfg.model.checkpoint) == ("mine", 0.5, 3, "demo")


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"},
     r"^config file .*b\.yaml: extends: 'a\.yaml' is a file this one already extends \(a cycle: .*a\.yaml -> .*b\.yaml "
     r"-> .*a\.yaml\)$"),
    ({"a.yaml": "extends: a.yaml\n"}, r"^config file .*a\.yaml: extends: 'a\.yaml' is a file this one already extends"),
    ({"a.yaml": "extends: [demo]\n"}, r"^config file .*a\.yaml: extends: got \['demo'\]; allowed: 'demo' \(the packaged "
                                      r"demo config\) or the path of a YAML config file, relative to this one$"),
    ({"a.yaml": "extends: nothere.yaml\n"}, r"^config file .*a\.yaml: extends: 'nothere\.yaml': .*nothere\.yaml not found; "
                                            r"allowed: 'demo'"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "search: [1, 2\n"}, r"^config file .*b\.yaml: not valid YAML"),
])
def test_a_bad_extends_is_one_error_naming_the_file(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config([tmp_path / "a.yaml"])


def test_a_file_whose_aliases_expand_beyond_the_limit_is_refused_before_it_is_expanded(tmp_path):
    """Five levels of ten aliases: over 100,000 values (keys count too) from a 5-line file (ten levels would be 10^10, a "billion laughs"
    that the loader would try to build); and an alias of a node that contains it."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 5)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml: its YAML aliases expand it to 123,461 values; allowed: at "
                                          r"most 100,000"):
        load_config([tmp_path / "bomb.yaml"])
    (tmp_path / "loop.yaml").write_text("search: &s\n  space: *s\n")
    with pytest.raises(ConfigError, match=r"loop\.yaml: line 1: a YAML alias refers to a node that contains it"):
        load_config([tmp_path / "loop.yaml"])
    # aliases that stay small are YAML like any other
    (tmp_path / "small.yaml").write_text("search: {kappa: &k 2.0, confidence: 0.9}\ndata: {protected: [{name: p, "
                                         "dev: a.json, test: b.json, kappa: *k}]}\n")
    cfg = load_config([tmp_path / "small.yaml"])
    assert cfg.search.kappa == cfg.data.protected[0].kappa == 2.0


@pytest.mark.parametrize("override, key", [("search.kappa=.inf", "search.kappa"),
                                           ("data.protected=[{name: p, dev: a.json, test: b.json, kappa: .inf}]",
                                            r"data.protected\[0\].kappa"),
                                           ("data.pool_hours=.inf", "data.pool_hours")])
def test_an_infinite_number_is_refused_naming_the_key(override, key):
    """kappa = inf would be written to summary.json as Infinity, which is not JSON."""
    with pytest.raises(ConfigError, match=rf"^{key}: got inf; must be a finite number"):
        load_config([DEMO_CONFIG], ['data.original_dev=""', 'data.original_test=""', override])
