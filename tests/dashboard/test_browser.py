"""The dashboard and the report in a real headless Chromium (Debian's, driven by Playwright):
every view drawn with data, no JavaScript error, live refresh, the "Fixed and broken" view of a real
search; screenshots saved in the test's tmp dir."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest
from dash_helpers import METADATA, TRIALS, WINNER, trial_rows

from raysearch_adapters.dashboard.report import REPORT_UTTERANCES, write_report
from raysearch_adapters.results import TRIALS_SCHEMA, read_rows, write_table
from raysearch_adapters.results.hypotheses import DOMAINS, HYPOTHESES_SCHEMA, SPLITS, alignment_grids, outcome

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
    # the dashboard draws the importances once its worker thread has them (the report has them at once)
    page.wait_for_selector("#chart-importances[data-state=chart]")
    for key in CHARTS:
        box = page.locator(f"#chart-{key}")
        assert box.get_attribute("data-state") == "chart", f"{key}: {box.inner_text()}"
        points = box.locator(".plot .scatterlayer .point, .plot .barlayer .point, .plot .scatterlayer .js-line")
        assert points.count() > 0, f"chart {key} drew no data"
    summary = page.locator("#summary-table").inner_text()
    assert "base model" in summary and f"winner (trial {WINNER})" in summary and "19.50" in summary
    assert ("feasible = original-domain dev degradation ≤ κ = 1 WER points (kappa 1, absolute), no original-domain "
            "dev transcript newly looping") in page.locator("#summary").inner_text()
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


def _cards(page):
    return page.locator("#fb-utterances .utt")


def _marks(cells) -> list:
    """Per cell of an alignment row: its fixed/broken mark and how the model got the word (its op class)."""
    return [(next((m for m in ("fixed", "broken") if m in c.split()), ""), next((k for k in c.split()
                                                                                  if k.startswith("op-")), ""))
            for c in cells.evaluate_all("cells => cells.map((c) => c.className)")]


OP_CLASSES = {"=": "op-eq", "S": "op-sub", "D": "op-del", "I": "op-ins", "": "op-none"}


def _check_marks(card, row) -> set:
    """The card of ``row`` shows the alignment and marks computed from the file; returns its marks."""
    (grid,) = alignment_grids([row["reference"]], [row["base_hypothesis"]], [row["winner_hypothesis"]])
    ref = _marks(card.locator("tr.align-reference td"))
    winner = _marks(card.locator("tr.align-winner td"))
    base = _marks(card.locator("tr.align-base td"))
    assert [m for m, _ in ref] == [m for m, _ in winner] == [c.mark for c in grid]
    assert [op for _, op in winner] == [OP_CLASSES[c.winner[0]] for c in grid]
    assert [op for _, op in base] == [OP_CLASSES[c.base[0]] for c in grid]
    assert card.locator("tr.align-reference td").all_inner_texts() == [c.ref or "" for c in grid]
    return {c.mark for c in grid}


def test_fixed_and_broken_view_of_a_real_search(serve, demo_model_search, page, tmp_path):
    _, _, out = demo_model_search
    rows = read_rows(out / "hypotheses.parquet", HYPOTHESES_SCHEMA)
    s = serve(out)
    page.goto(s.url + "/")
    _wait_rendered(page)
    # the counts at the top are those of the file
    counts = collections.Counter((r["domain"], r["split"], outcome(r)) for r in rows)
    assert page.locator("#fb-headline").inner_text() == "; ".join(
        f"{d} {sp}: {counts[d, sp, 'fixed']} fixed, {counts[d, sp, 'broken']} broken" for sp in SPLITS for d in DOMAINS)
    assert _cards(page).count() == 25
    assert page.locator("#fb-count").inner_text() == f"showing 25 of {len(rows)} utterances"
    page.locator("#fb-more").click()
    assert _cards(page).count() == len(rows)
    for domain, wanted in (("original", "broken"), ("new", "fixed")):
        page.select_option("#fb-domain", domain)
        page.select_option("#fb-split", "dev")
        page.select_option("#fb-outcome", wanted)
        expected = {r["utterance_id"]: r for r in rows
                    if (r["domain"], r["split"], outcome(r)) == (domain, "dev", wanted)}
        assert expected, f"the search fixed or broke no {domain} dev utterance"
        ids = [c.get_attribute("data-id") for c in _cards(page).all()]
        assert sorted(ids) == sorted(expected)
        deltas = [expected[i]["winner_errors"] - expected[i]["base_errors"] for i in ids]
        assert deltas == sorted(deltas, reverse=wanted == "broken")  # the most changed first
        card = _cards(page).first
        assert card.locator(".badge.outcome").inner_text() == wanted
        assert wanted in _check_marks(card, rows[int(card.get_attribute("data-row"))])
        card.screenshot(path=str(tmp_path / f"{wanted}.png"))
    page.select_option("#fb-domain", "original")
    page.select_option("#fb-outcome", "changed")
    assert sorted(c.get_attribute("data-id") for c in _cards(page).all()) == sorted(
        r["utterance_id"] for r in rows if (r["domain"], r["split"]) == ("original", "dev")
        and outcome(r) in ("fixed", "broken"))
    # the player's file is the one its row names
    row = int(card.get_attribute("data-row"))
    src = card.locator("audio").get_attribute("src")
    assert src.startswith(f"audio/{row}#t=")
    played = page.request.get(f"{s.url}/{src.split('#')[0]}")
    assert played.status == 200 and played.body() == Path(rows[row]["audio_path"]).read_bytes()
    assert page.locator("#trial-exports a").evaluate_all("links => links.map((a) => a.getAttribute('href'))") == [
        "export/trials.csv", "export/trials.parquet"]
    page.select_option("#fb-domain", "all")
    page.select_option("#fb-outcome", "all")
    page.locator("#view-fixed-broken").screenshot(path=str(tmp_path / "fixed-broken.png"))
    assert page.errors == []


def test_report_carries_the_most_fixed_and_broken_and_the_substitutions(real_copy, page, tmp_path):
    report = write_report(real_copy)
    requests = []
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:")) else None)
    page.goto(report.html.as_uri())
    _wait_rendered(page)
    sets = [f"{d} {sp}" for sp in SPLITS for d in DOMAINS]
    assert [t.split(":")[0] for t in page.locator(".subs h3").all_inner_texts()] == sets  # substitution tables
    assert page.locator(".subs table").count() == 2 * len(sets)
    cards = _cards(page)
    assert 0 < cards.count() <= 2 * REPORT_UTTERANCES * len(sets) and page.locator("audio").count() == 0
    assert set(cards.evaluate_all("cards => cards.map((c) => c.dataset.outcome)")) == {"fixed", "broken"}
    assert "this report keeps the 5 most fixed and most broken of each set" in page.locator("#fb-count").inner_text()
    assert page.locator("#trial-exports a").count() == 0 and requests == []
    page.locator("#view-fixed-broken").screenshot(path=str(tmp_path / "report-fixed-broken.png"))
    assert page.errors == []


def test_a_search_of_several_types_filters_its_trial_table_by_type(serve, results_copy, page, tmp_path):
    lora = {"type": "lora", "dim": None, "position": None, "stochastic_depth": None, "l2_lambda": None, "rank": 4,
            "alpha": 8.0, "targets": "q,v"}
    rows = [{**r, **(lora if r["trial_id"] in ("t1", "t3") else {})} for r in trial_rows()]
    write_table(results_copy / "trials.parquet", rows, TRIALS_SCHEMA, METADATA)
    s = serve(results_copy)
    page.goto(s.url + "/")
    _wait_rendered(page)
    assert "best feasible trial per adapter type" in page.locator("#per-type-table").inner_text()
    page.locator("#trial-type").select_option("lora")
    ids = page.locator("#trials tbody tr td:first-child").all_inner_texts()
    assert sorted(ids) == ["t1", "t3"]
    page.locator("#trials th[data-key=dev_wer_new]").click()  # sorting keeps the filter
    assert page.locator("#trials tbody tr td:first-child").all_inner_texts() == ["t1", "t3"]
    page.locator("#trial-type").select_option("all")
    assert page.locator("#trials tbody tr").count() == len(TRIALS)
    page.screenshot(path=str(tmp_path / "types.png"), full_page=True)
    assert page.errors == []
