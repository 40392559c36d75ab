"""``raysearch-adapters submit``: run a search on a Ray cluster as a Ray job, and follow, inspect or stop it.

The job's entrypoint is ``<python> -m raysearch_adapters search CONFIG... key=value...`` run in
the project folder, uploaded as the runtime_env ``working_dir`` (without ``.git``, virtualenvs,
data, caches and results). The config is loaded here first, so a typo fails before anything is
uploaded; the cluster loads it again, with its own environment (``RAYSEARCH_ADAPTERS_HOME``...).

Ray >= 2.59 clusters use token authentication: the token comes from ``--token-file``,
``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token`` (the file ``ray start
--head`` writes; sent only to a head on this machine or when ``RAY_AUTH_MODE=token``, as Ray's
own client does), and goes in an ``Authorization: Bearer`` header.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import yaml

from raysearch_adapters.commands.args import load_from_args
from raysearch_adapters.config import HOME_ENV, Config
from raysearch_adapters.errors import UserError, first_line
from raysearch_adapters.hosts import is_loopback

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never uploaded: version control, virtualenvs, generated data, caches and results (Ray also honours .gitignore).
EXCLUDES = [".git", ".venv", "venv", ".gpu", "results", "pretrain", "demo_data", "data", ".cache", "__pycache__",
            "*.egg-info", ".pytest_cache", "*.pyc", "*.arrow", "*.flac", "*.wav"]
# Forwarded to the job when set in the submitting shell.
FORWARDED_ENV = ("RAY_TRAIN_V2_ENABLED", HOME_ENV)
CONNECT_TIMEOUT_S = 5.0


class SubmitError(UserError):
    """The cluster cannot be reached, refuses us, or the job request is not valid."""


def project_root() -> Path:
    """The source checkout this package runs from (its ``pyproject.toml`` folder), else the current folder."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def normalize_address(address: str | None) -> str:
    """``--address``, else ``RAY_ADDRESS``, else the local dashboard; ``HOST:PORT`` gets ``http://``."""
    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if "://" not in address:
        address = "http://" + address
    scheme = urlparse(address).scheme
    if scheme not in ("http", "https"):
        raise SubmitError(f"--address {address}: jobs are submitted to the Ray dashboard's HTTP address "
                          f"(http://HEAD:8265), not {scheme}://")
    return address.rstrip("/")


def _read_token(path: Path, what: str) -> str:
    try:
        token = path.expanduser().read_text().strip()
    except OSError as e:
        raise SubmitError(f"{what} {path}: cannot read the Ray auth token ({e.strerror})") from None
    if not token:
        raise SubmitError(f"{what} {path}: the file is empty; expected the cluster's Ray auth token")
    return token


def find_token(address: str, token_file: str | None = None) -> str | None:
    """The Ray auth token for ``address`` (see the module docstring for the order), or None."""
    if token_file:
        return _read_token(Path(token_file), "--token-file")
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return _read_token(Path(os.environ["RAY_AUTH_TOKEN_PATH"]), "RAY_AUTH_TOKEN_PATH")
    default = Path.home() / ".ray" / "auth_token"
    token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    if default.is_file() and (token_mode or is_loopback(urlparse(address).hostname or "")):
        return _read_token(default, "token file")
    return None


def _check_reachable(address: str) -> None:
    # requests has no connect timeout in Ray's client: a dead host would hang for minutes.
    url = urlparse(address)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise SubmitError(f"cannot reach the Ray dashboard at {address} ({e.strerror or type(e).__name__}); check "
                          "that the head node is up (`ray status` on it), that its dashboard listens on that host "
                          "and port (ray start --head --dashboard-host 0.0.0.0 --dashboard-port 8265) and that no "
                          "firewall or missing port-forward is in the way") from None


def connect(address: str | None = None, token_file: str | None = None):
    """A ``JobSubmissionClient`` for the cluster at ``address``, with the auth token when there is one."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = normalize_address(address)
    _check_reachable(address)
    token = find_token(address, token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as e:
        raise SubmitError(f"{address}: {first_line(e)}; pass the head's token with --token-file (on the head: "
                          "`ray get-auth-token`, or its ~/.ray/auth_token) or set RAY_AUTH_TOKEN") from None
    except (ConnectionError, RuntimeError) as e:
        raise SubmitError(f"{address}: not a Ray dashboard, or it failed to answer ({e}); check the address "
                          "(the dashboard port, 8265 by default, not the GCS port 6379)") from None


def _job_args(items: list[str], root: Path) -> list[str]:
    """CONFIG paths made relative to the uploaded ``root``; key=value overrides unchanged."""
    out = []
    for item in items:
        if "=" in item:
            out.append(item)
            continue
        path = Path(item).resolve()
        if not path.is_relative_to(root):
            raise SubmitError(f"config file {item}: outside {root}, the folder uploaded as the job's working_dir; "
                              "move it there or pass --working-dir with a folder that holds it")
        out.append(str(path.relative_to(root)))
    return out


def results_location(cfg: Config) -> str:
    """Where the job writes results (checked here: a relative folder would land in the job's temp working_dir)."""
    if not Path(cfg.results.dir).is_absolute():
        raise SubmitError(f"results.dir: got {cfg.results.dir!r}; a job runs in a temporary copy of the project, "
                          "so give an absolute folder every node sees, e.g. results.dir=/mnt/shared/results")
    return str(Path(cfg.results.dir) / cfg.search.name)


def build_runtime_env(root: Path, runtime_env_file: str | None = None, env: list[str] = ()) -> dict:
    """The job's runtime_env: ``runtime_env_file`` (YAML), the project as ``working_dir`` and the env vars."""
    runtime_env: dict = {}
    if runtime_env_file:
        try:
            runtime_env = yaml.safe_load(Path(runtime_env_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise SubmitError(f"--runtime-env {runtime_env_file}: {first_line(e)}") from None
        if not isinstance(runtime_env, dict):
            raise SubmitError(f"--runtime-env {runtime_env_file}: expected a mapping (pip, env_vars, ...), "
                              f"got {type(runtime_env).__name__}")
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env_vars.update(runtime_env.get("env_vars") or {})
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SubmitError(f"--env {item!r}: expected KEY=VALUE")
        env_vars[key] = value
    runtime_env.setdefault("working_dir", str(root))
    runtime_env["excludes"] = sorted(set(runtime_env.get("excludes") or []) | set(EXCLUDES))
    if env_vars:
        runtime_env["env_vars"] = {k: str(v) for k, v in env_vars.items()}
    return runtime_env


def entrypoint(python: str, job_args: list[str], resume: bool = False) -> str:
    """The job's shell command: the ``search`` command under the cluster's interpreter."""
    return shlex.join([python, "-m", "raysearch_adapters", "search", *job_args] + (["--resume"] if resume else []))


def prepare_job(items: list[str], python: str = "python", root: Path | None = None,
                runtime_env_file: str | None = None, env: list[str] = (), resume: bool = False) -> dict:
    """The job request for the search of CONFIG/key=value ``items`` (validated here, before any upload).

    Returns ``submit_job`` keyword arguments plus ``results``, the results folder on the cluster."""
    cfg = load_from_args(items)
    results = results_location(cfg)
    root = (root or project_root()).resolve()
    return {"entrypoint": entrypoint(python, _job_args(items, root), resume),
            "runtime_env": build_runtime_env(root, runtime_env_file, env),
            "submission_id": f"raysearch-{cfg.search.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
            "metadata": {"raysearch_adapters.search": cfg.search.name, "results": results},
            "results": results}


def follow(client, job_id: str, out=None) -> str:
    """Stream the job's logs to ``out`` (stdout) until it ends; returns its final status (e.g. 'SUCCEEDED')."""
    out = out or sys.stdout

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    # The log stream closes as the job ends; the status may lag it for a moment.
    for _ in range(50):
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return str(status.value)
        time.sleep(0.2)
    return str(client.get_job_status(job_id).value)


def _final(status: str) -> int:
    return 0 if status == "SUCCEEDED" else 1


def run(args: argparse.Namespace) -> int:
    """``raysearch-adapters submit [--address URL] [CONFIG] [key=value ...] [--follow]``, or --status/--logs/--stop."""
    job_id = args.status or args.logs or args.stop
    if job_id and args.config:
        raise SubmitError(f"--status/--logs/--stop take a job id only; got config arguments {' '.join(args.config)}")
    address = normalize_address(args.address)
    if not job_id:
        root = Path(args.working_dir).resolve() if args.working_dir else None
        job = prepare_job(args.config, args.python, root, args.runtime_env, args.env, args.resume)
    client = connect(address, args.token_file)
    try:
        if args.status:
            info = client.get_job_info(job_id)
            print(f"{job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
            return 0
        if args.logs:
            if args.follow:
                return _final(follow(client, job_id))
            print(client.get_job_logs(job_id), end="")
            return 0
        if args.stop:
            stopped = client.stop_job(job_id)
            print(f"{job_id}: {'stop requested' if stopped else 'already finished'}")
            return 0
    except RuntimeError as e:  # the job server's 404 for an unknown id
        raise SubmitError(f"job {job_id} at {address}: {first_line(e)}") from None
    results = job.pop("results")
    job_id = client.submit_job(**job)
    print(f"submitted job {job_id} to {address}; results go to {results} on the cluster", flush=True)
    print(f"  follow: raysearch-adapters submit --address {address} --logs {job_id} --follow", flush=True)
    if not args.follow:
        return 0
    status = follow(client, job_id)
    print(f"job {job_id}: {status}; results in {results}")
    return _final(status)
