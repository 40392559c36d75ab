"""Multi-node searches need storage every node sees; verified, not assumed.

On a Ray cluster with more than one alive node, trials run on other nodes than the driver:
their workers read the feature cache and the manifests, and write checkpoints under the Tune
/Train storage path that the driver later reads. So the driver writes a marker file with a
random token into ``results.dir``, ``data.cache_dir`` and a local ``results.storage_path``,
and a tiny Ray task on every alive node reads them back (and checks that the manifests and
the model checkpoint exist there). A node that does not see them fails the search before
any work, with the key and the path to fix. ``s3://``/``gs://`` storage paths are not checked:
they are shared by construction.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raysearch_adapters.config import Config
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.registry import backbone_class
from raysearch_adapters.search.preflight import may_be_positive

MARKER_PREFIX = ".raysearch-shared-check-"
PROBE_TIMEOUT_S = 120.0


class SharedStorageError(UserError):
    """A path that every node must see is node-local on a multi-node cluster."""


def _is_uri(path: str) -> bool:
    return "://" in path


def shared_dirs(cfg: Config) -> dict[str, str]:
    """Config key -> folder that trial workers on any node write or read (as the trials see it)."""
    dirs = {"results.dir": str(Path(cfg.results.dir).expanduser().absolute()), "data.cache_dir": cfg.data.cache_dir}
    if cfg.results.storage_path and not _is_uri(cfg.results.storage_path):
        dirs["results.storage_path"] = cfg.results.storage_path
    return dirs


def input_files(cfg: Config) -> dict[str, str]:
    """Config key -> file every trial worker reads (manifests of training and dev, a model checkpoint file)."""
    files = {"data.new_train": cfg.data.new_train, **{s.dev_key: s.dev for s in cfg.measured_sets()}}
    for key, name in (("replay_manifest", "replay"), ("distill_manifest", "distill_weight")):
        if getattr(cfg.data, key) and may_be_positive(cfg, name):
            files[f"data.{key}"] = getattr(cfg.data, key)
    for path in backbone_class(cfg.model.name).input_files(cfg.model):
        files["model.checkpoint"] = path
    return files


@ray.remote(num_cpus=0)
def _probe(markers: dict[str, tuple[str, str]], files: dict[str, str]) -> list[str]:
    """Runs on one node: the keys whose marker it cannot read back or whose file it cannot find."""
    missing = []
    for key, (path, token) in markers.items():
        try:
            seen = Path(path).expanduser().read_text()
        except OSError:
            seen = None
        if seen != token:
            missing.append(key)
    missing += [key for key, path in files.items() if not Path(path).expanduser().exists()]
    return missing


def _node_name(node: dict) -> str:
    return f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]})"


def check_shared_storage(cfg: Config) -> None:
    """On a multi-node Ray cluster, fail unless every alive node sees the search's folders and input files."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    # A file the driver does not see either fails later with its own error (or is the demo, built on first use).
    dirs = shared_dirs(cfg)
    files = {k: p for k, p in input_files(cfg).items() if Path(p).expanduser().exists()}
    token = secrets.token_hex(8)
    markers = {}
    for key, folder in dirs.items():
        path = Path(folder).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        marker = path / f"{MARKER_PREFIX}{token}"
        marker.write_text(token)
        markers[key] = (str(marker), token)
    try:
        refs = {n["NodeID"]: _probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(markers, files) for n in nodes}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        missing_by_key: dict[str, list[str]] = {}
        for node in nodes:
            ref = refs[node["NodeID"]]
            keys = ray.get(ref) if ref in ready else ["(no answer within %.0f s)" % PROBE_TIMEOUT_S]
            for key in keys:
                missing_by_key.setdefault(key, []).append(_node_name(node))
    finally:
        for path, _ in markers.values():
            Path(path).unlink(missing_ok=True)
    if not missing_by_key:
        return
    problems = []
    for key, names in missing_by_key.items():
        where = ", ".join(names)
        if key in dirs:
            problems.append(f"{key}={dirs[key]} is not shared: {where} cannot see the file the driver wrote there")
        elif key in files:
            problems.append(f"{key}={files[key]} is missing on {where}")
        else:
            problems.append(f"{where}: {key}")
    raise SharedStorageError(
        f"this Ray cluster has {len(nodes)} nodes and trials run on any of them, but " + "; ".join(problems) +
        ". Put results.dir, data.cache_dir and the data on storage every node mounts at the same path (NFS, a "
        "ReadWriteMany volume); results.storage_path may also be s3:// or gs:// (see cluster/README.md)")
