"""``raysearch-adapters report``: one self-contained HTML file and a PNG per chart."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from dash_helpers import METADATA, SEARCH, trial_rows

from raysearch_adapters.commands.main import main
from raysearch_adapters.dashboard.page import plotly_js
from raysearch_adapters.dashboard.report import write_report
from raysearch_adapters.errors import UserError
from raysearch_adapters.results import TRIALS_SCHEMA, write_table


@pytest.fixture(scope="module")
def report(finished_dir, tmp_path_factory):
    """One report of a copy of the finished search (writing it costs seconds: 5 MB of HTML, 7 PNGs)."""
    return write_report(shutil.copytree(finished_dir, tmp_path_factory.mktemp("report") / SEARCH))


def test_report_html_inlines_plotly_and_the_data(report):
    html = report.html.read_text()
    results_dir = report.html.parent
    assert report.html.name == "report.html"
    assert plotly_js().read_text() in html and "<script src=" not in html and '<link rel="stylesheet"' not in html
    data = re.search(r'<script type="application/json" id="rsa-view">(.*?)</script>', html, re.S).group(1)
    view = json.loads(data)
    assert view["search_id"] == SEARCH and view["summary"]["winner"]["trial_id"] == "t6"
    assert not [p.name for p in results_dir.iterdir() if p.name.startswith(".")]  # no temp file left


def test_data_cannot_close_the_script_block(results_copy):
    rows = trial_rows()
    rows[6]["error"] = "</script><script>alert(1)</script>"
    write_table(results_copy / "trials.parquet", rows, TRIALS_SCHEMA, METADATA)
    html = write_report(results_copy).html.read_text()
    assert "alert(1)" in html and "<script>alert(1)" not in html


def test_pngs_are_real_images_of_each_chart(report):
    assert len(report.pngs) == 7
    for png in report.pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (880, 550), png  # 8 x 5 inches at 110 dpi


def test_partial_folder_reports_what_there_is(results_copy):
    (results_copy / "summary.json").unlink()
    report = write_report(results_copy)
    assert any("Search running" in m for m in report.notes) and report.errors == [] and report.html.is_file()


def test_report_reads_no_link_out_of_the_folder(results_copy, tmp_path):
    rows = trial_rows()
    rows[0]["trial_id"] = "trial-from-outside-the-folder"
    write_table(tmp_path / "elsewhere.parquet", rows, TRIALS_SCHEMA, METADATA)
    (results_copy / "trials.parquet").unlink()
    (results_copy / "trials.parquet").symlink_to(tmp_path / "elsewhere.parquet")
    report = write_report(results_copy)
    assert report.errors == [f"{results_copy / 'trials.parquet'}: cannot be read: a link to outside the results "
                             "folder (the dashboard reads only files inside it)"]
    assert "trial-from-outside-the-folder" not in report.html.read_text()


def test_a_report_that_cannot_be_written_is_one_line(results_copy, capsys):
    (results_copy / "plots").write_text("a file where the plots folder goes")
    assert main(["report", str(results_copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raysearch-adapters report: error: RESULTS_DIR {results_copy}: cannot write the report (")
    assert err.count("\n") == 1


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="nothing to report: No results yet"):
        write_report(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_report_command_without_torch_ray_or_transformers(results_copy):
    code = ("import sys\nfrom raysearch_adapters.commands.main import main\nrc = main(['report', sys.argv[1]])\n"
            "print('imported:', sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))\n"
            "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(results_copy)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"report: {results_copy / 'report.html'}" in r.stdout and "7 PNG files" in r.stdout
    assert "imported: []" in r.stdout
    assert (results_copy / "plots" / "tradeoff.png").is_file()
