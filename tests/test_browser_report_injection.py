"""An exported report with hostile layer names, sentences, labels, title, captions and notes (and a
report saved before escaping existed), opened in Chromium with every network request blocked and
recorded: no script runs, nothing is fetched, every figure is drawn with the hostile text shown as
text."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402
from tests.test_report_injection import (IMG_PAYLOAD, LINK_PAYLOAD, SCRIPT_PAYLOAD, TITLE,  # noqa: E402
                                         hostile_items, saved_before_escaping)

pytestmark = B.MARKS

TEXT_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(el =>
    [...el.querySelectorAll('svg text')].map(t => t.textContent).join('\\n'))"""
# Headless Chromium has no WebGL hover for scattergl: the same trace, drawn as SVG, is hovered.
HOVER_JS = """async (i) => { const gd = document.querySelectorAll('.js-plotly-plot')[i];
    await Plotly.restyle(gd, {type: 'scatter'});
    Plotly.Fx.hover(gd, [{curveNumber: 0, pointNumber: 0}]);
    return [...gd.querySelectorAll('.hoverlayer text')].map(t => t.textContent).join('\\n'); }"""


@pytest.mark.parametrize("presentation", [False, True])
def test_exported_report_runs_no_script_in_chromium(browser, tmp_path, isolated_store, presentation):
    from analysis import report
    from analysis.store import default_store

    store = default_store()
    items = hostile_items() + saved_before_escaping()
    store.put_doc("report", "00aa00aa00aa00aa", {"title": TITLE, "notes": f"Notes {IMG_PAYLOAD}", "items": items}, name=TITLE)
    saved = store.get_doc("report", "00aa00aa00aa00aa")  # every export of a saved report starts here
    path = tmp_path / "report.html"
    path.write_text(report.build_html(saved["items"], saved["title"], presentation=presentation,
                                      notes=saved["notes"]), encoding="utf-8")
    n_figures = sum(i["kind"] == "figure" for i in items)

    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    requested = []
    ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
              else (requested.append(route.request.url), route.abort()))
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(path.as_uri())
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n_figures}")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned === undefined")
    assert page.title() == TITLE  # the title is text, and no script changed it
    assert requested == []  # no image, script or link target fetched
    assert errors == []
    assert page.locator(".js-plotly-plot").count() == n_figures
    assert page.locator("img").count() == 0

    texts = page.evaluate(TEXT_JS)
    heatmap, old_figure = texts[0], texts[-1]
    assert SCRIPT_PAYLOAD in heatmap and IMG_PAYLOAD in heatmap  # layer names drawn as text (tick labels)
    assert SCRIPT_PAYLOAD in old_figure and IMG_PAYLOAD in old_figure
    scatter = texts[3]
    assert IMG_PAYLOAD in scatter and LINK_PAYLOAD in scatter  # labels as text in the legend
    assert page.locator(".js-plotly-plot a").count() == 0  # no Plotly link from a label
    hover = page.evaluate(HOVER_JS, 3)
    assert hover == f"[{LINK_PAYLOAD}] 1: {SCRIPT_PAYLOAD}"  # label and sentence, as text, in the hover label

    body = page.inner_text("body")
    for payload in (SCRIPT_PAYLOAD, IMG_PAYLOAD, f"Caption {SCRIPT_PAYLOAD}", f"Notes {IMG_PAYLOAD}"):
        assert payload in body
    assert page.locator("strong", has_text="Bold").count() == 1
    assert page.locator("td", has_text=SCRIPT_PAYLOAD).count() >= 2  # layer tables and the old table
    assert page.locator("th", has_text="condition=").count() == 1
    links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    assert all(h.startswith("data:text/csv") for h in links[1:]), links  # the CSV downloads
    assert links[0] == 'http://example.org/"onmouseover="x'  # the author's own link in the notes, one attribute
    ctx.close()
