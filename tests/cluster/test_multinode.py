"""The search submitted as a Ray job to a real two-node cluster (token auth on), end to end.

Slow (minutes on 2 cores): run with ``pytest tests/cluster -m slow``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from builders import tiny_search_overrides
from raysearch_adapters.results.tables import TRIALS_FILE, TRIALS_SCHEMA, read_rows

JOB_TIMEOUT_S = 1200  # a tiny search as a job takes minutes on 2 shared cores
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2 * JOB_TIMEOUT_S)]


def _cli(cluster, *args: str) -> subprocess.CompletedProcess:
    """The real ``raysearch-adapters submit`` command against ``cluster``."""
    return subprocess.run([sys.executable, "-m", "raysearch_adapters", "submit", "--address", cluster.address,
                           "--token-file", str(cluster.token_file), *args],
                          capture_output=True, text=True, timeout=JOB_TIMEOUT_S)


def _submit(cluster, overrides: list[str], *flags: str) -> subprocess.CompletedProcess:
    # The head was started from this virtualenv but the job's shell PATH has the system python:
    # name the interpreter, as a user names the cluster image's.
    return _cli(cluster, "--python", sys.executable, "--env", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1", *flags,
                *overrides)


def _job_id(out: str) -> str:
    return re.search(r"submitted job (\S+)", out).group(1)


def test_wrong_token_is_refused(local_cluster, tmp_path):
    wrong = tmp_path / "token"
    wrong.write_text("not-the-token")
    done = subprocess.run([sys.executable, "-m", "raysearch_adapters", "submit", "--address", local_cluster.address,
                           "--token-file", str(wrong), "--status", "x"], capture_output=True, text=True, timeout=120)
    err = done.stderr.strip()
    assert done.returncode == 2 and "\n" not in err and local_cluster.address in err and "--token-file" in err, err


def test_node_local_results_dir_is_refused(local_cluster, search_data):
    if local_cluster.node_local is None:
        pytest.skip("no mount namespaces here: cannot give a node a folder the others do not see")
    results = local_cluster.node_local / "results"
    start = time.monotonic()
    done = _submit(local_cluster, tiny_search_overrides(*search_data, results, "local"), "--follow")
    out = done.stdout
    assert done.returncode == 1, out[-3000:] + done.stderr[-3000:]
    assert re.search(rf"results\.dir={re.escape(str(local_cluster.node_local))}\S* is not shared: "
                     r"\S+ \(node \w{8}\) cannot see", out), out[-3000:]
    assert "data.cache_dir" not in out.split("is not shared")[0][-300:]  # the shared cache is not blamed
    assert not (results / "local").exists() or not any((results / "local").iterdir())  # refused before writing
    print(f"node-local refusal: {time.monotonic() - start:.0f} s")


def test_search_runs_on_both_nodes(local_cluster, search_data, tmp_path_factory):
    results = tmp_path_factory.mktemp("shared") / "results"
    start = time.monotonic()
    done = _submit(local_cluster, tiny_search_overrides(*search_data, results, "two", "resources.cpus_per_worker=0.9"),
                   "--follow")
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-3000:]
    assert f"results go to {results / 'two'}" in out
    trials = read_rows(results / "two" / TRIALS_FILE, TRIALS_SCHEMA)
    assert len(trials) == 4 and all(r["status"] in ("COMPLETE", "PRUNED") for r in trials), trials
    # One CPU per node and 0.9 per trial worker: two concurrent trials cannot share a node.
    assert len({r["node_id"] for r in trials}) == 2
    alive = {n["node_id"] for n in local_cluster.alive_nodes()}
    assert {r["node_id"] for r in trials} <= alive
    assert json.loads((results / "two" / "summary.json").read_text())["trials"]["total"] == 4
    print(f"two-node search: {time.monotonic() - start:.0f} s")


def _wait_for_trial_on(path, node_id: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if path.is_file() and any(r["node_id"] == node_id and r["status"] == "RUNNING"
                                  for r in read_rows(path, TRIALS_SCHEMA)):
            return
        time.sleep(0.5)
    raise TimeoutError(f"no trial ran on node {node_id}")


def test_search_survives_losing_a_node(local_cluster, search_data, tmp_path_factory):
    node3 = local_cluster.add_node("node3")
    results = tmp_path_factory.mktemp("shared") / "results"
    # Long trials without early stopping, so the one on node3 is mid-training when the node dies.
    overrides = tiny_search_overrides(*search_data, results, "lose", "resources.cpus_per_worker=0.9",
                                 "resources.max_concurrent_trials=3", "search.num_trials=5", "search.kappa=100",
                                 "search.asha.enabled=false", "train.steps=60", "train.eval_every=2")
    start = time.monotonic()
    done = _submit(local_cluster, overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    job = _job_id(done.stdout)
    _wait_for_trial_on(results / "lose" / TRIALS_FILE, node3, time.monotonic() + JOB_TIMEOUT_S)
    local_cluster.kill("node3")
    done = _cli(local_cluster, "--logs", job, "--follow")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    trials = read_rows(results / "lose" / TRIALS_FILE, TRIALS_SCHEMA)
    on_node3 = [r for r in trials if r["node_id"] == node3]
    assert on_node3 and all(r["status"] == "FAIL" for r in on_node3), on_node3
    assert len(trials) == 5 and all(r["status"] in ("COMPLETE", "FAIL") for r in trials)
    summary = json.loads((results / "lose" / "summary.json").read_text())
    assert summary["winner"] is not None and summary["winner"]["test"] is not None
    winner = next(r for r in trials if r["trial_id"] == summary["winner"]["trial_id"])
    assert winner["status"] == "COMPLETE" and winner["feasible"] and winner["node_id"] != node3
    print(f"search losing a node: {time.monotonic() - start:.0f} s")
