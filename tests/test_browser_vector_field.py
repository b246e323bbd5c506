"""The Vector field page in a real browser: a share link restores the view (autoencoder, section,
parameters), the autoencoder follows model A in the sidebar and the address follows it (issue 15),
and Plotly's toolbar covers no title, legend or annotation, nor is a table cut off (issue 20).

Needs playwright and Debian's Chromium (/usr/bin/chromium); never skipped when CI=true.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

expect = B.expect
sync_playwright = B.sync_playwright
pytestmark = B.MARKS
RENDER_MS = 180_000
SMALL = "vf_starts=80&vf_noise=40&vf_steps=300"

# Rectangles of each chart's toolbar and of its titles, legends and annotations that intersect it
OVERLAPS_JS = """() => {
  const box = e => e.getBoundingClientRect();
  const hit = (a, b) => a.width > 0 && b.width > 0 && a.left < b.right && b.left < a.right
                        && a.top < b.bottom && b.top < a.bottom;
  const out = [];
  for (const chart of document.querySelectorAll("[data-testid='stPlotlyChart']")) {
    const bar = chart.querySelector('.modebar');
    if (!bar) continue;
    const title = (chart.querySelector('.gtitle') || {}).textContent || '(untitled)';
    for (const el of chart.querySelectorAll('.gtitle, .annotation, .legend')) {
      if (hit(box(bar), box(el))) out.push(title + ' :: ' + el.getAttribute('class') + ' ' + el.textContent.slice(0, 50));
    }
  }
  return out;
}"""
TITLES_JS = "() => [...document.querySelectorAll(\"[data-testid='stPlotlyChart'] .gtitle\")].map(e => e.textContent)"
CUT_TABLES_JS = """() => [...document.querySelectorAll("[data-testid='stTable']")]
  .filter(t => t.scrollWidth > t.clientWidth + 1).map(t => t.textContent.slice(0, 60))"""


def rendered(page, proc):
    try:
        B.wait_rendered(page, RENDER_MS)
    except Exception as exc:
        raise AssertionError(f"page did not render: {exc}\n{B.server_log(proc)}")
    assert page.get_by_test_id("stException").count() == 0


def compute_all(page, proc):
    """Press Compute wherever the page asks first (the regimes)."""
    for _ in range(3):
        button = page.get_by_test_id("stMain").get_by_role("button", name="Compute")
        if button.count() == 0:
            return
        button.first.click()
        rendered(page, proc)


def test_vector_field_link_figures_and_url(page, server):
    base_url, proc = server
    page.goto(f"{base_url}/vector-field?vf_model=zoo%3Amlp-ae-memorize&vf_view=attractors&{SMALL}")
    rendered(page, proc)
    main = page.get_by_test_id("stMain")
    # the link's values were applied: the overfit autoencoder, the attractors section, 80 starts
    expect(main).to_contain_text("Attractor gallery")
    assert any("Memorization against its null" in t and "zoo:mlp-ae-memorize" in t for t in page.evaluate(TITLES_JS))
    assert main.get_by_test_id("stNumberInput").filter(has_text="Data starts").locator("input").input_value() == "80"
    label = page.get_by_test_id("stMetricLabel").filter(has_text=re.compile(r"^\s*Memorization\s*$"))
    memo = main.get_by_test_id("stMetric").filter(has=label)
    assert float(memo.get_by_test_id("stMetricValue").inner_text()) > 0.99
    assert main.get_by_test_id("stImage").count() >= 4  # the gallery

    # switch to the field: the address follows, the field and the convergence curves draw
    main.get_by_test_id("stRadio").filter(has_text="probing").get_by_text("field", exact=True).click()
    rendered(page, proc)
    expect(page).not_to_have_url(re.compile(r"vf_view="))  # the default section leaves the address
    expect(page).to_have_url(re.compile(r"[?&]vf_model=zoo(%3A|:)mlp-ae-memorize(&|$)"))
    assert any("the PCA plane of the training latents (32-D latent" in t for t in page.evaluate(TITLES_JS))
    expect(main).to_contain_text("Convergence")
    main.get_by_test_id("stRadio").filter(has_text="Background").get_by_text("basins", exact=True).click()
    rendered(page, proc)
    expect(page).to_have_url(re.compile(r"[?&]vf_bg=basins(&|$)"))


def test_the_autoencoder_and_the_address_follow_model_a(page, browser, server):
    """Issue 15: after model A went from zoo:mlp-ae-b2 to zoo:mlp-ae-b8 the page kept analysing b2,
    and the address then reopened a different view from the one on screen."""
    base_url, proc = server
    page.goto(f"{base_url}/vector-field?a=zoo%3Amlp-ae-b2&{SMALL}")
    rendered(page, proc)
    assert any(t.startswith("Latent vector field of zoo:mlp-ae-b2") for t in page.evaluate(TITLES_JS))
    B.pick_selectbox(page, "Model A", "zoo:mlp-ae-b8")
    rendered(page, proc)
    compute_all(page, proc)
    titles = page.evaluate(TITLES_JS)
    assert any(t.startswith("Latent vector field of zoo:mlp-ae-b8") for t in titles), titles
    assert not any("mlp-ae-b2" in t for t in titles)
    query = parse_qs(urlsplit(page.url).query)
    assert query["a"] == ["zoo:mlp-ae-b8"] and query.get("vf_model", ["zoo:mlp-ae-b8"]) == ["zoo:mlp-ae-b8"]
    # the address reopens the view on screen, in another browser session
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    other.goto(page.url)
    rendered(other, proc)
    compute_all(other, proc)
    assert any(t.startswith("Latent vector field of zoo:mlp-ae-b8") for t in other.evaluate(TITLES_JS))
    other.context.close()


def test_no_toolbar_covers_a_title_legend_or_annotation_and_no_table_is_cut(page, server):
    """Issue 20, on every section of the page (the default view first)."""
    base_url, proc = server
    for view, query in (("field", ""), ("attractors", f"&{SMALL}"), ("ood", f"&{SMALL}&vf_ood_n=60"),
                        ("probing", f"&{SMALL}"), ("regimes", "&vf_starts=40&vf_noise=20&vf_steps=150")):
        page.goto(f"{base_url}/vector-field?vf_view={view}{query}")
        rendered(page, proc)
        compute_all(page, proc)
        assert page.get_by_test_id("stPlotlyChart").count() >= 1, view
        page.get_by_test_id("stPlotlyChart").first.hover()  # the toolbar shows on hover
        assert page.evaluate(OVERLAPS_JS) == [], view
        assert page.evaluate(CUT_TABLES_JS) == [], view
        titles = page.evaluate(TITLES_JS)
        assert titles and all("zoo:mlp-ae-" in t for t in titles), (view, titles)  # which model, every time
