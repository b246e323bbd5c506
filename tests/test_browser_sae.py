"""Browser test of the SAE features page: the SAE trains, a click on the decoder map opens that
feature (and the URL follows), and a reload takes the SAE from the result store."""
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
RENDER_MS = 240_000
# A small SAE and the PCA decoder map keep the test short (UMAP's first call compiles for ~30 s).
QUERY = "/sae?sae_exp=2&sae_steps=100&sae_map=pca&sae_match=false"

POINT_JS = """(current) => {
  const plots = [...document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')];
  const gd = plots.find(p => (p.layout.title.text || '').startsWith('Decoder directions'));
  gd.scrollIntoView({block: 'center'});
  const t = gd._fullData[0], xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
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


def _open(browser, url, proc):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
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
    assert page.get_by_text(re.compile("from the result store")).count() == 1
    assert _feature_heading(page) == target["feature"]
    context.close()
