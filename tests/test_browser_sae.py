"""Browser tests of the SAE features page (a real server, jobs in worker processes): the SAE trains, a
click on the decoder map opens that feature (and the URL follows), a reload computes nothing; a long
training shows its estimate, then its loss / L0 curve growing while it runs, and stops on Cancel;
on the default view no Plotly toolbar covers a title, legend or annotation, no legend meets an axis
title, and no metric is cut short."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

sync_playwright = B.sync_playwright
pytestmark = B.MARKS
RENDER_MS = 300_000
# A short training and the PCA decoder map keep the first test short (UMAP's first call compiles).
QUERY = "/sae?sae_steps=100&sae_map=pca&sae_match=false"

POINT_JS = """(current) => {
  const plots = [...document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')];
  const gd = plots.find(p => (p.layout.title.text || '').startsWith('Decoder directions'));
  gd.scrollIntoView({block: 'center'});
  const t = gd._fullData[0], xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  // a live feature other than the one on show, far from its neighbours so the click hits it alone
  let best = -1, bestGap = -1;
  for (let j = 0; j < t.x.length; j++) {
    if (t.customdata[j] === current) continue;
    let gap = Infinity;
    for (let i = 0; i < t.x.length; i++) if (i !== j) {
      const dx = xa.l2p(t.x[i]) - xa.l2p(t.x[j]), dy = ya.l2p(t.y[i]) - ya.l2p(t.y[j]);
      gap = Math.min(gap, dx * dx + dy * dy);
    }
    if (gap > bestGap) { bestGap = gap; best = j; }
  }
  const r = gd.getBoundingClientRect();
  return {feature: t.customdata[best], x: r.left + xa._offset + xa.l2p(t.x[best]),
          y: r.top + ya._offset + ya.l2p(t.y[best])};
}"""

# Every Plotly figure: the rectangles of its toolbar, title, legend, annotations and x-axis titles.
OVERLAP_JS = """() => {
  const box = e => { const r = e.getBoundingClientRect(); return {l: r.left, t: r.top, r: r.right, b: r.bottom}; };
  const hit = (a, b) => a.l < b.r - 1 && b.l < a.r - 1 && a.t < b.b - 1 && b.t < a.b - 1;
  const out = [];
  for (const gd of document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')) {
    const title = (gd.layout.title && gd.layout.title.text) || '?';
    const bar = gd.querySelector('.modebar');
    const named = [...gd.querySelectorAll('.gtitle')].map(e => ['title', box(e)])
      .concat([...gd.querySelectorAll('.legend')].map(e => ['legend', box(e)]))
      .concat([...gd.querySelectorAll('.annotation')].map(e => ['annotation', box(e)]));
    if (bar) for (const [what, b] of named) if (hit(box(bar), b)) out.push(`${title}: the toolbar covers its ${what}`);
    const legends = [...gd.querySelectorAll('.legend')].map(box);
    for (const x of gd.querySelectorAll('.xtitle, .gtitle'))
      for (const l of legends) if (hit(l, box(x))) out.push(`${title}: the legend meets ${x.textContent}`);
  }
  return out;
}"""

CUT_JS = """() => [...document.querySelectorAll('[data-testid="stMetricValue"]')]
  .filter(e => e.scrollWidth > e.clientWidth + 1 || e.innerText.includes('…')).map(e => e.innerText)"""


def _open(browser, url, proc, height: int = 1000):
    context = browser.new_context(viewport={"width": 1400, "height": height})
    context.set_default_timeout(RENDER_MS)
    page = context.new_page()
    page.goto(url)
    try:
        B.wait_rendered(page, RENDER_MS, settle_ms=1000)
    except Exception as exc:
        raise AssertionError(f"{url} did not finish rendering: {exc}\nserver log:\n{B.server_log(proc)}")
    exc = page.get_by_test_id("stException")
    if exc.count():
        pytest.fail("the app shows an exception:\n" + "\n---\n".join(e.inner_text() for e in exc.all()))
    return context, page


def _feature_heading(page) -> int:
    text = page.get_by_role("heading", name=re.compile(r"^Feature \d+")).first.inner_text()
    return int(re.search(r"Feature (\d+)", text)[1])


def test_train_click_a_feature_on_the_decoder_map_and_reload_from_the_store(browser, server):
    base_url, proc = server
    context, page = _open(browser, base_url + QUERY, proc)
    metrics = " ".join(page.get_by_test_id("stMetric").all_inner_texts())
    assert "L0" in metrics and "Var. explained" in metrics
    assert page.get_by_text(re.compile(r"trained in [\d.]+ s")).count() == 1
    before = _feature_heading(page)
    target = page.evaluate(POINT_JS, before)
    page.mouse.click(target["x"], target["y"])
    deadline = time.monotonic() + 60
    while _feature_heading(page) != target["feature"]:
        if time.monotonic() > deadline:
            pytest.fail(f"the page shows feature {_feature_heading(page)}, not the clicked {target['feature']}")
        page.wait_for_timeout(200)
    B.wait_rendered(page, RENDER_MS)
    query = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert query.get("sae_feature") == str(target["feature"])
    url = page.url
    context.close()

    context, page = _open(browser, url, proc)  # a fresh session on the shared link
    assert page.get_by_text(re.compile(r"trained in [\d.]+ s")).count() == 1
    assert _feature_heading(page) == target["feature"]
    assert "job running" not in page.evaluate(B._BUSY_JS)
    context.close()


def test_a_long_training_shows_its_estimate_then_its_curve_live_and_stops_on_cancel(browser, server):
    base_url, proc = server
    url = base_url + "/sae?sae_layer_a=net.relu1&sae_steps=20000&sae_map=pca&sae_match=false"
    context, page = _open(browser, url, proc)
    estimate = page.get_by_text(re.compile(r"Will compute a TopK SAE with 128 latents on net\.relu1 .* about"))
    assert estimate.count() == 1, B.server_log(proc)
    page.get_by_role("button", name="Train (A)").click()
    live = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # the curve the worker writes as it trains, drawn under the bar
        live = page.evaluate("""() => {
          const gd = [...document.querySelectorAll('.js-plotly-plot')]
            .find(p => (p.layout.title.text || '').includes('training (live)'));
          return gd ? gd.data[0].x.length : null; }""")
        if live and live >= 2:
            break
        page.wait_for_timeout(500)
    assert live and live >= 2, f"no live training curve\n{B.server_log(proc)}"
    assert page.get_by_test_id("stProgress").count() >= 1
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text(re.compile("Cancelled")).first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Run again").wait_for(timeout=60_000)
    B.wait_rendered(page, 60_000)  # and no progress bar is left
    context.close()


def test_the_default_view_has_no_toolbar_over_a_title_and_no_metric_cut_short(browser, server):
    base_url, proc = server
    context, page = _open(browser, base_url + "/sae", proc, height=1400)
    # a busy machine's estimates (or a store without UMAP's compiled code) may hold sections back
    B.start_every_section(page, RENDER_MS, names=("Compute", "Train (A)", "Train (B) and match"))
    page.wait_for_selector("text=Match quality", timeout=RENDER_MS)
    B.wait_rendered(page, RENDER_MS, settle_ms=1000)
    for chart in page.locator('[data-testid="stPlotlyChart"]').all():  # draw every lazily shown chart
        chart.scroll_into_view_if_needed()
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stPlotlyChart]')]"
                           ".every(c => c.querySelector('.js-plotly-plot .modebar'))", timeout=60_000)
    titles = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(p => p.layout.title.text)")
    assert len(titles) >= 9 and any(t.startswith("Match quality") for t in titles), titles
    assert page.evaluate(OVERLAP_JS) == []
    assert page.evaluate(CUT_JS) == []
    context.close()
