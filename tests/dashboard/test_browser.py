"""The dashboard and the report in a real headless Chromium (Debian's, driven by Playwright):
every view drawn with data, no JavaScript error, live refresh; screenshots saved in the test's tmp dir."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dash_helpers import METADATA, TRIALS, WINNER, trial_rows

from raysearch_adapters.dashboard.report import write_report
from raysearch_adapters.results import TRIALS_SCHEMA, write_table

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e .[dev]")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} missing (Debian package chromium)", allow_module_level=True)

CHARTS = ["tradeoff", "placement", "dim", "lr", "curves_new", "curves_degradation", "importances"]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A page whose JavaScript errors (exceptions and console errors) are collected in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # Generous: parsing the 5 MB Plotly.js takes long on a busy 2-core machine.
    context.set_default_timeout(180_000)
    context.set_default_navigation_timeout(180_000)
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(f"pageerror: {e}"))
    pg.on("console", lambda m: pg.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    yield pg
    context.close()


def _wait_rendered(page, count: int = 1) -> None:
    page.wait_for_function(f"Number(document.body.dataset.rendered || 0) >= {count}", timeout=180_000)


def _check_every_view(page) -> None:
    for key in CHARTS:
        box = page.locator(f"#chart-{key}")
        assert box.get_attribute("data-state") == "chart", f"{key}: {box.inner_text()}"
        points = box.locator(".plot .scatterlayer .point, .plot .barlayer .point, .plot .scatterlayer .js-line")
        assert points.count() > 0, f"chart {key} drew no data"
    summary = page.locator("#summary-table").inner_text()
    assert "base model" in summary and f"winner (trial {WINNER})" in summary and "19.50" in summary
    assert page.locator("#trials tbody tr").count() == len(TRIALS)


def test_dashboard_draws_every_view_without_errors(serve, finished_dir, page, tmp_path):
    s = serve(finished_dir)
    page.goto(s.url + "/")
    _wait_rendered(page)
    _check_every_view(page)
    assert page.locator("#state").inner_text() == "finished"
    # Sorting: a click on "dev WER new" puts the lowest WER (t2, 15.0) first, nulls (the failed t7) last.
    page.locator("#trials th[data-key=dev_wer_new]").click()
    first, last = page.locator("#trials tbody tr").first, page.locator("#trials tbody tr").last
    assert first.locator("td").first.inner_text() == "t2" and last.locator("td").first.inner_text() == "t7"
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert page.errors == []


def test_dashboard_refreshes_while_the_search_runs(serve, results_copy, page):
    (results_copy / "summary.json").unlink()
    s = serve(results_copy)
    page.goto(s.url + "/")
    _wait_rendered(page)
    assert page.locator("#state").inner_text() == "running"
    rows = trial_rows()
    rows[-1].update(status="COMPLETE", dev_wer_new=12.0, degradation=0.4, feasible=True)
    time.sleep(0.01)
    write_table(results_copy / "trials.parquet", rows, TRIALS_SCHEMA, METADATA)
    _wait_rendered(page, 2)  # the poll saw the new table and redrew
    assert "best feasible so far (trial t8)" in page.locator("#summary").inner_text()
    assert page.errors == []


@pytest.mark.parametrize("case", ["empty", "corrupt"])
def test_bad_folders_show_a_message_not_an_error(serve, results_copy, tmp_path, page, case):
    d = tmp_path / "empty" if case == "empty" else results_copy
    if case == "empty":
        d.mkdir()
    else:
        (d / "trials.parquet").write_bytes(b"PAR1 truncated")
    page.goto(serve(d).url + "/")
    _wait_rendered(page)
    if case == "empty":
        assert "No results yet" in page.locator("#messages li").first.inner_text()
    else:  # shown as an error (red), not as a note
        assert "not a readable Parquet file" in page.locator("#messages li.error").first.inner_text()
    page.screenshot(path=str(tmp_path / f"{case}.png"), full_page=True)
    assert page.errors == []


def test_report_is_self_contained_and_draws_every_view(results_copy, page, tmp_path, browser):
    report = write_report(results_copy)
    assert {p.stem for p in report.pngs} == set(CHARTS)
    html = report.html.read_text()
    assert "<script src=" not in html and "http://" not in html.split("<script", 1)[0]
    # Offline: any request leaving the file (a CDN, the dashboard server) fails the test.
    requests = []
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:")) else None)
    page.goto(report.html.as_uri())
    _wait_rendered(page)
    _check_every_view(page)
    assert page.locator("#state").inner_text() == "finished" and requests == []
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert page.errors == []
