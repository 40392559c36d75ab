"""A real multi-node Ray cluster on this machine (``ray start`` processes) with token authentication.

Each node is its own ``ray start --block`` process group, so a test can kill one node (SIGKILL to
the group: raylet, its workers) as a machine failure would, without touching other Ray instances
on the machine. A node can run in its own mount namespace with a tmpfs over a folder: that folder
is then node-local, like a local disk on a real cluster node.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests


RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    # Several nodes on one machine must not fight over Ray's fixed default ports.
    return [f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]


def can_unshare_mounts() -> bool:
    """Whether this process may make a private mount namespace (root, or a container that allows it)."""
    return bool(shutil.which("unshare")) and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode == 0


class LocalCluster:
    """A head and worker nodes started with ``ray start``; token auth on, with a token file of its own."""

    def __init__(self, root: Path):
        self.root = root
        # Short path: Ray's socket paths under the temp dir must stay under 108 characters.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rsc", dir="/tmp"))
        self.token_file = root / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file), RAY_USAGE_STATS_ENABLED="0")
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.nodes: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str], node_local: Path | None) -> subprocess.Popen:
        # A temp dir per node, as separate machines have: nodes sharing one would share (and
        # garbage-collect) each other's unpacked runtime_env working_dir.
        cmd = [RAY, "start", "--block", "--num-cpus=1", f"--temp-dir={self.temp_dir / name}", *_node_ports(), *args]
        if node_local is not None:
            node_local.mkdir(parents=True, exist_ok=True)
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   f"mount -t tmpfs tmpfs {shlex.quote(str(node_local))} && exec {shlex.join(cmd)}"]
        log = open(self.root / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes[name] = proc
        return proc

    def start_head(self) -> None:
        """The head: GCS, dashboard (job server) and one CPU."""
        self._start("head", ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={_free_port()}"],
                    None)
        self.wait_for_nodes(1)

    def add_node(self, name: str, node_local: Path | None = None) -> str:
        """A worker node with one CPU and a custom resource ``name``; returns its node id."""
        before = {n["node_id"] for n in self.alive_nodes()}
        self._start(name, [f"--address=127.0.0.1:{self.gcs_port}", f"--resources={json.dumps({name: 1})}"],
                    node_local)
        nodes = self.wait_for_nodes(len(before) + 1)
        return next(n["node_id"] for n in nodes if n["node_id"] not in before)

    def alive_nodes(self) -> list[dict]:
        """The state API's alive nodes (empty while the dashboard is not up)."""
        headers = {"Authorization": f"Bearer {self.token_file.read_text()}"}
        try:
            r = requests.get(f"{self.address}/api/v0/nodes?limit=100", headers=headers, timeout=10)
            r.raise_for_status()
        except requests.RequestException:
            return []
        return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def wait_for_nodes(self, n: int) -> list[dict]:
        """Wait until ``n`` nodes are alive (fails with the node logs if a node process died)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, proc in self.nodes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"ray node {name} exited: {(self.root / f'{name}.log').read_text()[-2000:]}")
            nodes = self.alive_nodes()
            if len(nodes) >= n:
                return nodes
            time.sleep(1)
        raise TimeoutError(f"{n} Ray nodes not alive after {START_TIMEOUT_S} s")

    def kill(self, name: str) -> None:
        """SIGKILL a node's whole process group: the node dies as a crashed machine would."""
        proc = self.nodes.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def shutdown(self) -> None:
        """Stop every node (worker nodes first), then remove the temp dir."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            proc = self.nodes[name]
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """A head plus node ``node2`` whose ``node_local`` folder only it sees (when mount namespaces are allowed)."""
    root = tmp_path_factory.mktemp("cluster")
    cluster = LocalCluster(root)
    try:
        cluster.start_head()
        cluster.node_local = root / "node_local" if can_unshare_mounts() else None
        cluster.add_node("node2", cluster.node_local)
        yield cluster
    finally:
        cluster.shutdown()
