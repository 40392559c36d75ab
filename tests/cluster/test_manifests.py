"""The cluster configs under cluster/ are valid for the tools that read them (offline checks)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from raysearch_adapters.commands.submit import build_runtime_env

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
SHARED = "/mnt/shared"


def _launcher() -> dict:
    return yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())


def _validated(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_yaml_passes_rays_own_validation():
    prepared = _validated(_launcher())
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    # The head runs the driver only: no CPU for trials.
    assert head["resources"] == {"CPU": 0}
    workers = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert workers and all(t["max_workers"] > t["min_workers"] for t in workers)  # autoscaling
    # Every node installs the project and mounts the shared folder into the container.
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        assert any("pip install" in c and "raysearch-adapters" in c for c in commands)
    assert any(SHARED in opt for opt in prepared["docker"]["run_options"])


def test_launcher_validation_can_fail():
    # The check above means something: Ray's schema rejects a misspelled node-type field.
    bad = _launcher()
    bad["available_node_types"]["head"]["resourcez"] = {"CPU": 0}
    with pytest.raises(jsonschema.ValidationError, match="resourcez"):
        _validated(bad)


def _pod_specs(cluster_spec: dict) -> list[tuple[dict, dict]]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [(g, g["template"]["spec"]) for g in groups]


def _check_cluster_spec(spec: dict) -> None:
    assert "rayStartParams" in spec["headGroupSpec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "no worker group asks for GPUs"
    for g in spec["workerGroupSpecs"]:
        assert {"groupName", "rayStartParams", "template"} <= set(g)
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    for _, pod in _pod_specs(spec):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        assert pod["containers"]
        for c in pod["containers"]:
            assert c["image"]
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert claims.get(mounts.get(SHARED)) == "raysearch-shared", f"{c['name']}: no shared volume"
            env = {e["name"]: e["value"] for e in c["env"]}
            assert env["RAYSEARCH_ADAPTERS_HOME"].startswith(SHARED)


def test_shared_volume_is_read_write_many():
    pvc = yaml.safe_load((CLUSTER / "kuberay" / "shared-pvc.yaml").read_text())
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == "raysearch-shared"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_raycluster_manifest_has_what_kuberay_requires():
    doc = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster" and doc["metadata"]["name"]
    _check_cluster_spec(doc["spec"])


def test_rayjob_manifest_has_what_kuberay_requires():
    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob" and doc["metadata"]["name"]
    spec = doc["spec"]
    assert "-m raysearch_adapters search" in spec["entrypoint"]
    # Results must land on the shared volume, not in the head pod's ephemeral disk.
    assert f"results.dir={SHARED}/" in spec["entrypoint"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["RAYSEARCH_ADAPTERS_HOME"].startswith(SHARED)
    _check_cluster_spec(spec["rayClusterSpec"])


def test_runtime_env_example_is_used_by_submit(tmp_path):
    env = build_runtime_env(tmp_path, str(CLUSTER / "runtime_env.yaml"), ["EXTRA=1"])
    assert env["working_dir"] == str(tmp_path)
    assert env["env_vars"]["RAYSEARCH_ADAPTERS_HOME"].startswith(SHARED) and env["env_vars"]["EXTRA"] == "1"
    assert any(p.startswith("optuna") for p in env["pip"])
    assert {".git", ".venv", "results"} <= set(env["excludes"])
