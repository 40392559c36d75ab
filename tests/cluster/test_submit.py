"""``raysearch-adapters submit`` without a cluster: the job request and the errors a user meets first."""

from __future__ import annotations

import shlex
import socket

import pytest

from raysearch_adapters.commands.main import main
from raysearch_adapters.commands.submit import find_token, normalize_address, prepare_job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, f"expected one line, got: {err}"
    return err


def test_unreachable_address_is_one_clear_line(capsys, tmp_path):
    address = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    assert main(["submit", "--address", address, f"results.dir={tmp_path}"]) == 2
    err = _error_line(capsys)
    assert f"cannot reach the Ray dashboard at {address}" in err and "ray status" in err


def test_unreachable_address_for_status_too(capsys):
    address = f"127.0.0.1:{_free_port()}"
    assert main(["submit", "--address", address, "--status", "raysubmit_x"]) == 2
    assert f"http://{address}" in _error_line(capsys)


def test_relative_results_dir_is_refused_before_connecting(capsys):
    # A relative folder would be created inside the job's temporary copy of the project and lost.
    assert main(["submit", "--address", "http://127.0.0.1:1", "results.dir=results"]) == 2
    assert "results.dir: got 'results'" in _error_line(capsys)


def test_bad_config_key_fails_before_connecting(capsys, tmp_path):
    assert main(["submit", "--address", "http://127.0.0.1:1", f"results.dir={tmp_path}", "search.num_trails=3"]) == 2
    assert "search.num_trials" in _error_line(capsys)


def test_config_outside_the_uploaded_folder_is_refused(tmp_path):
    root, outside = tmp_path / "project", tmp_path / "elsewhere.yaml"
    root.mkdir()
    outside.write_text("search:\n  num_trials: 2\n")
    with pytest.raises(ValueError, match="outside .*working_dir"):
        prepare_job([str(outside), f"results.dir={tmp_path}/r"], root=root)


def test_job_request(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEARCH_ADAPTERS_HOME", "/mnt/shared/home")
    root = tmp_path / "project"
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "s.yaml").write_text("search:\n  name: cl\n")
    job = prepare_job([str(root / "conf" / "s.yaml"), f"results.dir={tmp_path}/res", "search.num_trials=3"],
                      python="/opt/py/bin/python", root=root, env=["A=b"], resume=True)
    # The config file is passed relative to the working_dir the cluster unpacks.
    assert shlex.split(job["entrypoint"]) == ["/opt/py/bin/python", "-m", "raysearch_adapters", "search",
                                              "conf/s.yaml", f"results.dir={tmp_path}/res", "search.num_trials=3",
                                              "--resume"]
    env = job["runtime_env"]
    assert env["working_dir"] == str(root) and ".git" in env["excludes"] and ".venv" in env["excludes"]
    assert env["env_vars"] == {"RAYSEARCH_ADAPTERS_HOME": "/mnt/shared/home", "A": "b"}
    assert job["results"] == f"{tmp_path}/res/cl" and job["submission_id"].startswith("raysearch-cl-")


def test_address_forms(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert normalize_address(None) == "http://127.0.0.1:8265"
    assert normalize_address("head:8265/") == "http://head:8265"
    monkeypatch.setenv("RAY_ADDRESS", "https://ray.example:443")
    assert normalize_address(None) == "https://ray.example:443"
    with pytest.raises(ValueError, match="dashboard's HTTP address"):
        normalize_address("ray://head:10001")


def test_token_sources(tmp_path, monkeypatch):
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert find_token("http://10.0.0.5:8265") is None
    default = tmp_path / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("local-token\n")
    # The head's default token file is sent to a head on this machine only, unless token mode is asked for.
    assert find_token("http://127.0.0.1:8265") == "local-token"
    assert find_token("http://10.0.0.5:8265") is None
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert find_token("http://10.0.0.5:8265") == "local-token"
    path = tmp_path / "tok"
    path.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert find_token("http://10.0.0.5:8265") == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert find_token("http://10.0.0.5:8265") == "from-env"
    explicit = tmp_path / "explicit"
    explicit.write_text("")
    with pytest.raises(ValueError, match="--token-file .*empty"):
        find_token("http://10.0.0.5:8265", str(explicit))


def test_status_takes_no_config(capsys):
    assert main(["submit", "--status", "raysubmit_x", "search.num_trials=2"]) == 2
    assert "take a job id only" in _error_line(capsys)
