"""The dashboard server over real HTTP on 127.0.0.1: API, assets, downloads, read-only, no path traversal."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dash_helpers import METADATA, trial_rows

from raysearch_adapters.cli import build_parser
from raysearch_adapters.dashboard.page import plotly_js
from raysearch_adapters.results import TRIALS_SCHEMA, write_table

PY = sys.executable


def get(served, path: str, method: str = "GET"):
    """(status, headers, body) of a raw request: the path goes out exactly as written (no client normalising)."""
    conn = http.client.HTTPConnection(served.host, served.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


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
    out = subprocess.run([PY, "-m", "raysearch_adapters.cli", "dashboard", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "default: 127.0.0.1" in out
    assert build_parser().parse_args(["dashboard", "x"]).host == "127.0.0.1"


def test_cli_serves_on_loopback_without_importing_torch_or_ray(finished_dir):
    # The real command in its own process; the marker file records what it had imported while serving.
    code = ("import sys, atexit\n"
            "from raysearch_adapters.cli import main\n"
            "atexit.register(lambda: open(sys.argv[1], 'w').write(' '.join(sorted(m for m in ('torch', 'ray') "
            "if m in sys.modules))))\n"
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
    finally:
        proc.send_signal(2)  # Ctrl-C: a clean stop
        proc.wait(30)
    assert marker.read_text() == "", f"the dashboard imported {marker.read_text()}"


def test_cli_refuses_a_missing_folder(tmp_path):
    r = subprocess.run([PY, "-m", "raysearch_adapters.cli", "dashboard", str(tmp_path / "nope")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 2 and "not a folder" in r.stderr and "Traceback" not in r.stderr


def test_static_assets_exist_in_the_package():
    from raysearch_adapters.dashboard.page import STATIC_TYPES, static_path

    assert all(static_path(name).is_file() for name in STATIC_TYPES)
    assert static_path("../server.py") is None and static_path("index.html") is None
    assert Path(static_path("dashboard.js")).parent.name == "static"
