"""End-to-end checks of the app in a real browser: sidebar picks, share links, forged links.

Needs the playwright Python package and Debian's Chromium at /usr/bin/chromium (never
`playwright install`); skipped otherwise. One Streamlit server (with its own empty result store)
serves the whole module. Run with `python -m pytest tests/test_browser.py -v`.
"""
from __future__ import annotations

import re
import time
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so `tests.browser` imports under plain `pytest`
from tests import browser as B  # noqa: E402

expect = B.expect
sync_playwright = B.sync_playwright
pytestmark = B.MARKS

RENDER_MS = 60_000


@pytest.fixture
def page(browser, server):
    """A page in a fresh browser context (no cookies, no session shared with other tests)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(RENDER_MS)
    pg = context.new_page()
    yield pg
    context.close()


def _open(page, server, path="/"):
    base_url, proc = server
    page.goto(base_url + path)
    try:
        B.wait_rendered(page, RENDER_MS)
    except Exception as exc:
        raise AssertionError(f"{path} did not finish rendering: {exc}\nserver log:\n{B.server_log(proc)}")


def _assert_no_exception(page):
    exc = page.get_by_test_id("stException")
    if exc.count():
        pytest.fail("the app shows an exception:\n" + "\n---\n".join(e.inner_text() for e in exc.all()))


def _query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def test_pick_models_in_sidebar(page, server):
    _open(page, server)
    _assert_no_exception(page)
    B.pick_selectbox(page, "Model A", "zoo:cnn-s0")
    B.wait_rendered(page, RENDER_MS)
    B.pick_selectbox(page, "Model B", "zoo:mlp-ae-b8")
    B.wait_rendered(page, RENDER_MS)
    _assert_no_exception(page)

    main = page.get_by_test_id("stMain")
    expect(main).to_contain_text("zoo:cnn-s0")
    expect(main).to_contain_text("zoo:mlp-ae-b8")
    # The bound selectboxes write their values into the address (shareable links).
    expect(page).to_have_url(re.compile(r"[?&]a=zoo(%3A|:)cnn-s0(&|$)"))
    assert _query(page).get("a") == "zoo:cnn-s0" and _query(page).get("b") == "zoo:mlp-ae-b8", page.url
    expect(page.get_by_test_id("stImage").first).to_be_visible()  # the samples gallery


def test_share_link_restores_view(page, server):
    _open(page, server, "/?a=hf%3Aminilm&b=hf%3Aminilm-random&data=text&n=120")
    _assert_no_exception(page)
    assert B.selectbox_value(page, "Model A") == "hf:minilm"
    assert B.selectbox_value(page, "Model B") == "hf:minilm-random"
    assert B.selectbox_value(page, "Dataset") == "text"
    samples = page.get_by_test_id("stSidebar").get_by_test_id("stNumberInput").filter(has_text="Samples")
    expect(samples.locator("input")).to_have_value("120")
    expect(page.get_by_test_id("stMetricLabel").filter(has_text="k-NN probe").first).to_be_visible()
    assert _query(page).get("a") == "hf:minilm", page.url


def test_forged_link_is_ignored_with_warning(page, server):
    _open(page, server, "/?a=zoo%3A..%2F..%2Fetc%2Fpasswd&b=hf%3A%2Fetc")
    _assert_no_exception(page)
    warning = page.get_by_test_id("stSidebar").get_by_test_id("stAlert").filter(has_text="Ignored")
    expect(warning.first).to_be_visible()
    expect(page.get_by_test_id("stMain")).to_contain_text("Models")
    assert "passwd" not in B.selectbox_value(page, "Model A")
    assert B.selectbox_value(page, "Model B") != "hf:/etc"
    assert "passwd" not in page.url and "%2Fetc" not in page.url, page.url


def _main_selectbox_value(page, label: str) -> str:
    box = (page.locator("[data-testid='stMain'] [data-testid='stSelectbox']"
                        ":not([data-stale='true'] [data-testid='stSelectbox'])")
           .filter(has=page.get_by_test_id("stWidgetLabel").filter(has_text=re.compile(rf"^\s*{label}\s*$"))))
    return box.get_by_role("combobox").input_value()


def _first_plot_area(page, path, server) -> dict:
    """Open ``path`` and return the bounding box of its first Plotly chart's plotting area."""
    _open(page, server, path)
    B.start_every_section(page, RENDER_MS)  # a busy machine's estimates may ask first
    _assert_no_exception(page)
    chart = page.get_by_test_id("stPlotlyChart").first
    chart.scroll_into_view_if_needed()
    box, settled = None, 0
    for _ in range(100):
        if settled >= 3:
            break  # the page may still grow or scroll (figures below draw): wait for a steady box
        page.wait_for_timeout(200)
        now = chart.locator(".nsewdrag").first.bounding_box()
        settled = settled + 1 if now == box else 0
        box = now
    return box


def test_click_on_a_similarity_cell_drills_down(page, server):
    """A click on the A-vs-B heatmap selects that cell: the drill-down shows those two layers."""
    area = _first_plot_area(page, "/similarity", server)
    layers = ["net.fc1", "net.relu1", "net.fc2", "net.relu2", "net.fc3", "net.relu3", "net.logits"]
    row, col = 4, 1  # A: net.fc3, B: net.relu1 (not the default drill-down cell)
    page.mouse.click(area["x"] + (col + 0.5) * area["width"] / 7, area["y"] + (row + 0.5) * area["height"] / 7)
    deadline = time.monotonic() + 30
    while (_main_selectbox_value(page, "Layer of A"), _main_selectbox_value(page, "Layer of B")) != \
            (layers[row], layers[col]):
        if time.monotonic() > deadline:
            pytest.fail(f"drill-down shows {_main_selectbox_value(page, 'Layer of A')} / "
                        f"{_main_selectbox_value(page, 'Layer of B')}, not {layers[row]} / {layers[col]}")
        page.wait_for_timeout(100)
    B.wait_rendered(page, RENDER_MS)
    _assert_no_exception(page)
    stats_toggle = page.get_by_test_id("stCheckbox").filter(has_text=re.compile("Bootstrap CI"))
    if not stats_toggle.locator("input").is_checked():  # off when the machine is slow enough that they'd take > 6 s
        stats_toggle.locator("label").click()
        page.wait_for_timeout(300)
        B.wait_rendered(page, RENDER_MS)
    metrics = page.get_by_test_id("stMetric").all_inner_texts()
    assert any("Permutation p-value" in t for t in metrics)
    assert any("95% bootstrap CI" in t for t in metrics)


def test_lasso_in_one_projection_highlights_the_same_samples_in_the_other(page, server):
    box = _first_plot_area(page, "/projections", server)
    x0, y0 = box["x"] + 0.05 * box["width"], box["y"] + 0.05 * box["height"]
    x1, y1 = box["x"] + 0.55 * box["width"], box["y"] + 0.6 * box["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    for x, y in ((x1, y0), (x1, y1), (x0, y1), (x0, y0 + 2)):  # a lasso around the upper-left region
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    expect(page.get_by_text(re.compile(r"\d+ samples selected"))).to_be_visible(timeout=RENDER_MS)
    B.wait_rendered(page, RENDER_MS)
    _assert_no_exception(page)
    count = int(re.search(r"(\d+) samples selected", page.get_by_text(re.compile(r"samples selected")).inner_text())[1])
    assert count > 0
    highlighted = page.evaluate("""() => {
        const plots = document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot');
        const b = plots[1];
        return b.data.reduce((s, t) => s + (t.selectedpoints ? t.selectedpoints.length : 0), 0);
    }""")
    assert highlighted == count  # the same samples are highlighted in B's view
