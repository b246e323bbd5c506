"""The Projections page in a real browser (jobs in the process pool): after its job the widgets
show the layers the views show, the address follows, and the layer walk runs when switched on.
The lasso that links the two views is in test_browser.py.

Needs playwright and Debian's Chromium (/usr/bin/chromium); never skipped when CI=true.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

expect = B.expect
pytestmark = B.MARKS
RENDER_MS = 180_000


def _rendered(page, proc) -> None:
    try:
        B.wait_rendered(page, RENDER_MS)
    except Exception as exc:
        raise AssertionError(f"page did not render: {exc}\n{B.server_log(proc)}")
    assert page.get_by_test_id("stException").count() == 0


def _layer_widget(page, label: str) -> str:
    box = page.get_by_test_id("stMain").get_by_test_id("stSelectbox").filter(
        has=page.get_by_test_id("stWidgetLabel").filter(has_text=re.compile(rf"^\s*{label}\s*$")))
    return box.get_by_role("combobox").input_value()


def _titles(page) -> list[str]:
    return page.evaluate("() => Array.from(document.querySelectorAll('[data-testid=\"stPlotlyChart\"] "
                         ".js-plotly-plot')).map(p => (p.layout.title || {}).text || '')")


def test_after_the_job_the_widgets_show_the_views_layers_and_the_walk_runs_on_demand(browser, page, server):
    base_url, proc = server
    first = browser.new_context(viewport={"width": 1400, "height": 1000})  # another user came first
    other = first.new_page()
    other.set_default_timeout(RENDER_MS)
    other.goto(f"{base_url}/projections")
    _rendered(other, proc)
    first.close()
    page.goto(f"{base_url}/projections?n=130&proj_b=net.fc2")  # not stored: computed by a job
    _rendered(page, proc)
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(2)
    titles = _titles(page)
    assert "net.logits" in titles[0] and "net.fc2" in titles[1], titles
    # the page reran from the job's progress fragment: the widgets must still show these layers
    assert (_layer_widget(page, "Layer of A"), _layer_widget(page, "Layer of B")) == ("net.logits", "net.fc2")
    assert "walk" not in page.url

    page.get_by_test_id("stCheckbox").filter(has_text="Project every layer").locator("label").click()
    page.wait_for_timeout(300)
    _rendered(page, proc)
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(3)
    expect(page).to_have_url(re.compile(r"[?&]walk=true(&|$)"))
    assert "aligned to the previous layer" in _titles(page)[2]
    assert _layer_widget(page, "Layer of A") == "net.logits"
