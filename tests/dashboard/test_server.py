"""The dashboard server over real HTTP on 127.0.0.1: API, assets, downloads, read-only, no path traversal."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from dash_helpers import METADATA, get, trial_rows

from raysearch_adapters.commands.main import build_parser
from raysearch_adapters.dashboard.page import plotly_js
from raysearch_adapters.results import TRIALS_SCHEMA, write_table

PY = sys.executable


def test_api_view_and_page(serve, finished_dir):
    s = serve(finished_dir)
    status, headers, body = get(s, "/api/view")
    view = json.loads(body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "no-store" and view["state"] == "finished" and len(view["trials"]["rows"]) == 8
    status, _, page = get(s, "/")
    assert status == 200 and b'src="static/plotly.min.js"' in page and b'id="chart-tradeoff"' in page


def test_plotly_js_comes_from_the_installed_plotly_package(serve, finished_dir):
    status, headers, body = get(serve(finished_dir), "/static/plotly.min.js")
    assert status == 200 and body == plotly_js().read_bytes() and headers["Content-Type"].startswith("text/javascript")
    assert "site-packages" in str(plotly_js()) or "dist-packages" in str(plotly_js())


TRAVERSALS = [
    "/static/..%2Fserver.py", "/static/%2e%2e%2fserver.py", "/static/%2E%2E/%2E%2E/cli.py", "/static/../server.py",
    "/static/..%5cserver.py", "/files/..%2F..%2Fetc%2Fpasswd", "/files/%2e%2e%2fsecret.txt", "/files/../secret.txt",
    "/files/%252e%252e%252fsecret.txt", "/%2e%2e/secret.txt", "/files/secret.txt", "/static/index.html",
    "/files/.trials.parquet.tmp",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_nothing_outside_the_results_and_the_page_assets_is_served(serve, results_copy, path):
    # A file beside the results folder, and one inside it that is not a result file.
    (results_copy.parent / "secret.txt").write_text("SECRET")
    (results_copy / "secret.txt").write_text("SECRET")
    (results_copy / ".trials.parquet.tmp").write_text("SECRET")
    status, _, body = get(serve(results_copy), path)
    assert status in (400, 404) and b"SECRET" not in body and b"import" not in body


def _link_out(results_dir, name, outside):
    """Replace results file ``name`` by a link to ``outside`` (a real copy of it there, or new content)."""
    (results_dir / name).unlink(missing_ok=True)
    (results_dir / name).symlink_to(outside)


def test_links_out_of_the_results_folder_are_neither_served_nor_read(serve, results_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("SECRET")
    _link_out(results_copy, "config.yaml", elsewhere / "secret.txt")
    (results_copy / "trials.parquet").rename(elsewhere / "trials.parquet")  # a readable table, but outside
    _link_out(results_copy, "trials.parquet", elsewhere / "trials.parquet")
    (results_copy / "optuna.db").rename(elsewhere / "optuna.db")
    _link_out(results_copy, "optuna.db", elsewhere / "optuna.db")
    s = serve(results_copy)
    for name in ("config.yaml", "trials.parquet", "optuna.db"):
        status, _, body = get(s, f"/files/{name}")
        assert status == 403 and body.decode() == (f"not served: {results_copy / name}: cannot be read: a link to "
                                                   "outside the results folder (the dashboard reads only files "
                                                   "inside it)")
    view = json.loads(get(s, "/api/view")[2])
    assert view["trials"]["rows"] == [] and b"SECRET" not in get(s, "/api/view")[2]
    assert sorted(m.split(": ")[0] for m in view["errors"]) == sorted(
        str(results_copy / n) for n in ("config.yaml", "trials.parquet", "optuna.db"))
    assert "config.yaml" not in view["files"] and "summary.json" in view["files"]


def test_links_inside_the_results_folder_and_a_linked_folder_are_served(serve, results_copy, tmp_path):
    (results_copy / "best_adapter.pt").rename(results_copy / "adapter-real.pt")
    (results_copy / "best_adapter.pt").symlink_to("adapter-real.pt")
    linked = tmp_path / "linked-results"
    linked.symlink_to(results_copy, target_is_directory=True)
    s = serve(linked)
    assert get(s, "/files/best_adapter.pt")[:3:2] == (200, b"adapter weights")
    view = json.loads(get(s, "/api/view")[2])
    assert view["errors"] == [] and len(view["trials"]["rows"]) == 8 and "best_adapter.pt" in view["files"]


def test_a_fifo_in_place_of_a_results_file_is_reported_not_read(serve, results_copy):
    (results_copy / "summary.json").unlink()
    os.mkfifo(results_copy / "summary.json")  # reading it would block the view for ever
    s = serve(results_copy)
    view = json.loads(get(s, "/api/view")[2])
    assert f"{results_copy / 'summary.json'}: cannot be read: not a regular file" in view["errors"]
    assert view["state"] == "running" and get(s, "/files/summary.json")[0] == 403


def test_host_header_must_name_the_server(serve, finished_dir):
    s = serve(finished_dir)
    port = s.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
        assert get(s, "/api/view", host=host)[0] == 200, host
    # A rebound name (evil.example resolving to 127.0.0.1), another port, junk; no Host header (aiohttp: 400).
    for host in (f"evil.example:{port}", "evil.example", f"localhost:{port + 1}", "localhost",
                 f"127.0.0.1.evil.example:{port}", f"localhost:{port}x", f"[::1]x:{port}", ""):
        for path in ("/api/view", "/files/summary.json", "/"):
            status, _, body = get(s, path, host=host)
            assert status == (400 if host == "" else 421) and b"fixture" not in body, (host, path)
            if host:
                assert body.decode() == (f"Host header {host!r} does not name this dashboard (DNS rebinding "
                                         f"protection); open http://127.0.0.1:{port}/ or, on this machine, "
                                         f"http://localhost:{port}/")


def test_bound_to_every_address_the_machine_names_are_accepted_and_others_not(serve, finished_dir):
    s = serve(finished_dir, "0.0.0.0")
    assert get(s, "/api/view", host=f"{socket.gethostname()}:{s.port}")[0] == 200
    assert get(s, "/api/view", host=f"127.0.0.1:{s.port}")[0] == 200
    assert get(s, "/api/view", host=f"evil.example:{s.port}")[0] == 421


def test_result_files_download_by_name(serve, finished_dir):
    status, headers, body = get(serve(finished_dir), "/files/summary.json")
    assert status == 200 and json.loads(body)["search_id"] == "fixture" and "attachment" in headers["Content-Disposition"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_read_only_get_only(serve, results_copy, method):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in results_copy.iterdir())
    s = serve(results_copy)
    for path in ("/", "/api/view", "/files/summary.json"):
        assert get(s, path, method)[0] == 405
    assert sorted((p.name, p.stat().st_mtime_ns) for p in results_copy.iterdir()) == before


@pytest.mark.parametrize("case", ["empty", "partial", "corrupt"])
def test_bad_folders_answer_200_with_a_message(serve, results_copy, tmp_path, case):
    d = results_copy
    if case == "empty":
        d = tmp_path / "empty"
        d.mkdir()
    elif case == "partial":
        (d / "summary.json").unlink()
    else:
        data = (d / "epochs.parquet").read_bytes()
        (d / "epochs.parquet").write_bytes(data[:100])
    s = serve(d)
    status, _, body = get(s, "/api/view")
    view = json.loads(body)
    expected = {"empty": "No results yet", "partial": "Search running", "corrupt": "not a readable Parquet file"}
    found = view["notes"] if case in ("empty", "partial") else view["errors"]
    assert status == 200 and any(expected[case] in m for m in found)
    assert get(s, "/")[0] == 200


def test_view_follows_the_folder_while_a_search_runs(serve, results_copy):
    (results_copy / "summary.json").unlink()
    s = serve(results_copy)
    first = json.loads(get(s, "/api/view")[2])
    rows = trial_rows()
    rows[-1].update(status="COMPLETE", dev_wer_new=12.0, degradation=0.4, feasible=True)
    time.sleep(0.01)  # a distinct modification time even on coarse clocks
    write_table(results_copy / "trials.parquet", rows, TRIALS_SCHEMA, METADATA)
    second = json.loads(get(s, "/api/view")[2])
    assert second["fingerprint"] != first["fingerprint"]
    assert first["summary"]["winner"]["trial_id"] == "t6" and second["summary"]["winner"]["trial_id"] == "t8"


def test_dashboard_help_shows_the_loopback_default():
    out = subprocess.run([PY, "-m", "raysearch_adapters", "dashboard", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "default: 127.0.0.1" in out
    assert build_parser().parse_args(["dashboard", "x"]).host == "127.0.0.1"


def test_cli_serves_on_loopback_without_importing_torch_or_ray(finished_dir):
    # The real command in its own process; the marker file records what it had imported while serving.
    code = ("import sys, atexit\n"
            "from raysearch_adapters.commands.main import main\n"
            "atexit.register(lambda: open(sys.argv[1], 'w').write(' '.join(sorted(m for m in ('torch', 'ray', "
            "'transformers') if m in sys.modules))))\n"
            f"sys.exit(main(['dashboard', {str(finished_dir)!r}, '--port', '0']))\n")
    marker = finished_dir.parent / "imports.txt"
    proc = subprocess.Popen([PY, "-c", code, str(marker)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "at http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/api/view")
        assert json.loads(conn.getresponse().read())["state"] == "finished"
        conn.request("GET", "/api/view", headers={"Host": f"evil.example:{port}"})
        assert conn.getresponse().status == 421
    finally:
        proc.send_signal(2)  # Ctrl-C: a clean stop
        proc.wait(30)
    assert marker.read_text() == "", f"the dashboard imported {marker.read_text()}"


def test_cli_refuses_a_missing_folder(tmp_path):
    r = subprocess.run([PY, "-m", "raysearch_adapters", "dashboard", str(tmp_path / "nope")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 2 and "not a folder" in r.stderr and "Traceback" not in r.stderr


def test_static_assets_exist_in_the_package():
    from raysearch_adapters.dashboard.page import STATIC_TYPES, static_path

    assert all(static_path(name).is_file() for name in STATIC_TYPES)
    assert static_path("../server.py") is None and static_path("index.html") is None
    assert Path(static_path("dashboard.js")).parent.name == "static"


def test_importances_come_from_a_worker_thread_and_the_view_follows(serve, finished_dir):
    from raysearch_adapters.dashboard.server import IMPORTANCES_PENDING

    s = serve(finished_dir)
    first = json.loads(get(s, "/api/view")[2])
    assert first["charts"]["importances"] == {"message": IMPORTANCES_PENDING}
    assert first["fingerprint"].endswith("|importances-pending")
    for _ in range(600):  # the page's poll: the drawn fingerprint until the view changes
        view = json.loads(get(s, "/api/view?known=" + urllib.parse.quote(first["fingerprint"]))[2])
        if not view.get("unchanged"):
            break
        time.sleep(0.1)
    assert "data" in view["charts"]["importances"] and view["fingerprint"] == first["fingerprint"].split("|imp")[0]
    assert view["trials"] == first["trials"]
