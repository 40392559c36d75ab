"""The typed config, its errors, and the CLI skeleton."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raysearch_adapters.commands.args import split_config
from raysearch_adapters.commands.main import main, parse_args
from raysearch_adapters.config import ConfigError, load_config
from raysearch_adapters.results import read_rows
from raysearch_adapters.results.hypotheses import HYPOTHESES_SCHEMA

SUBCOMMANDS = ("demo-data", "pretrain", "evaluate", "search", "submit", "dashboard", "report", "export", "export-nemo",
               "config")


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "raysearch_adapters", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert f"    {name}" in out
    for name in SUBCOMMANDS:
        sub = subprocess.run([sys.executable, "-m", "raysearch_adapters", name, "--help"],
                             capture_output=True, text=True)
        assert sub.returncode == 0 and "usage: raysearch-adapters " + name in sub.stdout


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom raysearch_adapters.commands.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint('imported:', sorted(m for m in ('torch', 'ray', 'transformers', 'nemo', 'datasets', 'lhotse')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "imported: []"


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
    with pytest.raises(ConfigError, match=r"^search\.space\.lr\.low: got -0\.001; must be a number > 0"):
        load_config(overrides=["search.space.lr.low=-0.001"])
    with pytest.raises(ConfigError, match=r"^train\.lr: got -1\.0; must be a number > 0"):
        load_config(overrides=["train.lr=-1"])


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", r"train\.lr: Value 'abc' of type 'str' could not be converted to Float"),
    ("search.sampler=bayes", r"search\.sampler: got 'bayes'; allowed: tpe, random, grid, nsga2"),
    ("model.conformer.num_heads=5", r"model\.conformer\.num_heads: got 5; must divide d_model \(128\)"),
    ("search.space.dim.low=4", r"search\.space\.dim: .*give exactly one of value, choices, or low and high"),
    ("resources.num_workers=2", None),
    ("nonsense", r"override 'nonsense': expected key=value"),
    ("search..kappa=2", r"^override 'search\.\.kappa=2': expected key=value with a dotted key"),
    ("=2", r"^override '=2': expected key=value with a dotted key"),
    ("search.space.dim=}{", r"^override 'search\.space\.dim=\}\{': the value is not valid YAML \("),
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


FOLDER = object()  # a folder where a config file is expected


@pytest.mark.parametrize("name, content, message", [
    ("bad.yaml", "search:\n  num_trials: [1,\n", r"bad\.yaml: not valid YAML"),
    ("unknown.yaml", "search:\n  kapa: 2\n", r"unknown\.yaml: unknown key 'search\.kapa'; did you mean 'search\.kappa'"),
    ("list.yaml", "- search\n- train\n", r"list\.yaml: the top level is a list; expected sections such as search:"),
    ("missing.yaml", None, r"missing\.yaml: not found$"),
    ("folder.yaml", FOLDER, r"^config file \S+folder\.yaml: not a file$"),
])
def test_bad_yaml_file_names_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is FOLDER:
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config([path])


@pytest.mark.parametrize("override, hint", [("kappa=2", "did you mean 'search.kappa'?"),
                                            ("train.kapa=2", "did you mean 'search.kappa'?"),
                                            ("search.space.foo=3", "(allowed under 'search.space': type, dim,")])
def test_unknown_key_hints_point_at_a_real_key(override, hint):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert hint in str(err.value) and "search.space.space" not in str(err.value)


@pytest.mark.parametrize("port", ["99999", "-1", "abc", "65536"])
def test_dashboard_port_out_of_range_is_one_line_naming_port(tmp_path, port):
    r = subprocess.run([sys.executable, "-m", "raysearch_adapters", "dashboard", str(tmp_path), "--port", port],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == (f"raysearch-adapters dashboard: error: argument --port: got {port!r}; "
                                         "expected a port number 0-65535 (0: any free port)")


# The same command with its CONFIG|key=value items before and after its flags.
ANY_ORDER = [
    (["search", "--resume", "search.num_trials=3", "conf/demo.yaml"],
     ["search", "conf/demo.yaml", "--resume", "search.num_trials=3"]),
    (["pretrain", "pretrain.epochs=2", "--resume", "conf/demo.yaml"],
     ["pretrain", "conf/demo.yaml", "--resume", "pretrain.epochs=2"]),
    (["submit", "--resume", "search.num_trials=3", "--follow", "conf/demo.yaml"],
     ["submit", "conf/demo.yaml", "--follow", "--resume", "search.num_trials=3"]),
    (["evaluate", "--model", "demo", "train.seed=1", "--manifest", "a.json", "conf/demo.yaml"],
     ["evaluate", "conf/demo.yaml", "train.seed=1", "--manifest", "a.json", "--model", "demo"]),
    (["config", "show", "search.num_trials=3", "conf/demo.yaml"], ["config", "show", "conf/demo.yaml", "--",
                                                                  "search.num_trials=3"]),
]


def _flags(args):
    return {k: v for k, v in vars(args).items() if k not in ("config", "func")}  # func: a new closure per parser


@pytest.mark.parametrize("first, second", ANY_ORDER, ids=[a[0][0] for a in ANY_ORDER])
def test_config_items_may_come_before_or_after_the_flags(first, second):
    a, b = parse_args(first), parse_args(second)
    overrides = [w for w in first if "=" in w]
    assert split_config(a.config) == split_config(b.config) == (["conf/demo.yaml"], overrides)
    assert _flags(a) == _flags(b)


def test_evaluate_takes_several_manifests_and_the_config_items_after_them(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    manifests = []
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", np.zeros(8000, dtype=np.float32), 16000)
        manifests.append(tmp_path / f"{name}.json")
        manifests[-1].write_text(json.dumps({"audio_filepath": f"{name}.wav", "duration": 0.5, "text": "x"}) + "\n")
    conf = tmp_path / "c.yaml"
    conf.write_text("data:\n  max_batch_seconds: 30\n")
    out = tmp_path / "hyp.parquet"
    assert main(["evaluate", "--model", "demo", "--manifest", str(manifests[0]), str(manifests[1]), str(conf),
                 f"data.cache_dir={tmp_path / 'cache'}", "--hypotheses", str(out)]) == 0
    assert [r["manifest"] for r in read_rows(out, HYPOTHESES_SCHEMA)] == [str(m) for m in manifests]
    assert parse_args(["evaluate", "--manifest", "a.json", "b.json", "--manifest", "c.parquet",
                       "data/lang=en/d.json"]).manifest == ["a.json", "b.json", "c.parquet", "data/lang=en/d.json"]


def test_evaluate_without_a_manifest_among_the_words_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["evaluate", "--manifest", "conf/demo.yaml", "train.seed=1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --manifest: expected at least one manifest" in err.splitlines()[-1]


def test_a_path_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "afile").write_text("a file where a folder should be")
    r = subprocess.run([sys.executable, "-m", "raysearch_adapters", "demo-data", "--small", "--out",
                        str(tmp_path / "afile" / "corpus")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("raysearch-adapters demo-data: error: [Errno 17] File exists: ")
    assert r.stderr.count("\n") == 1
