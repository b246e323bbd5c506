"""Browser tests of share links and reports: a copied link opens the same figure in a fresh
browser without recomputation, short links survive a server restart behind a path prefix, and
an exported report opens offline in Chromium with every pinned figure drawn."""
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

sync_playwright = B.sync_playwright
pytestmark = B.MARKS
RENDER_MS = 120_000

FIGURE_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(el =>
    JSON.stringify(el.data.map(t => [t.type, t.z || null, t.x || null, t.y || null])))"""


def new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(RENDER_MS)
    return context, context.new_page()


def results_table(store_dir: Path) -> dict:
    with sqlite3.connect(store_dir / "index.sqlite") as con:
        return dict(con.execute("SELECT key, created FROM results").fetchall())


def _values(fig_json: str):
    import base64
    import json

    import numpy as np

    z = json.loads(fig_json)[0][1]
    return np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).tolist() if isinstance(z, dict) else z


def share_links(page) -> tuple[str, str]:
    page.get_by_role("button", name="Share this view").click()
    codes = page.locator("[data-testid='stPopoverBody'] [data-testid='stCode'] code")
    codes.first.wait_for(state="visible")
    texts = [t.strip() for t in codes.all_inner_texts()]
    page.keyboard.press("Escape")
    return texts[0], texts[1]


def test_a_copied_link_opens_the_same_figures_from_the_store(browser, tmp_path):
    store = tmp_path / "store"
    proc, base = B.start_server(store_dir=store)
    try:
        ctx, page = new_page(browser)
        page.goto(f"{base}/similarity?measure=rbf_cka&threshold=0.4&n=150&seed=3")
        B.wait_rendered(page, RENDER_MS)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3")
        first = page.evaluate(FIGURE_JS)
        assert len(first) >= 3
        full, short = share_links(page)
        assert "measure=rbf_cka" in full and "threshold=0.4" in full and "pooling=auto" in full  # defaults too
        ctx.close()
        before = results_table(store)
        assert before, "the first view stored its results"
        for link in (full, short):
            ctx, page = new_page(browser)  # a colleague's browser: no session, no cookies
            page.goto(link)
            B.wait_rendered(page, RENDER_MS)
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3")
            got = page.evaluate(FIGURE_JS)[:3]
            assert got == first[:3], (link, page.url, _values(got[0])[:5], _values(first[0])[:5])
            ctx.close()
        assert results_table(store) == before  # same keys, same creation times: nothing recomputed
    finally:
        B.stop_server(proc)


def test_short_links_work_behind_a_path_prefix_and_survive_a_restart(browser, tmp_path):
    store = tmp_path / "store"
    args = ("--server.baseUrlPath", "lab/replens")
    proc, base = B.start_server(store_dir=store, extra_args=args)
    try:
        ctx, page = new_page(browser)
        page.goto(f"{base}/lab/replens/projections?dims=3&n=100&colour=A+correct")
        B.wait_rendered(page, RENDER_MS)
        full, short = share_links(page)
        assert full.startswith(f"{base}/lab/replens/projections?") and "dims=3" in full
        assert short.startswith(f"{base}/lab/replens/projections?a=")
        ctx.close()
    finally:
        B.stop_server(proc)
    proc, base2 = B.start_server(store_dir=store, extra_args=args)  # restarted (and on another port)
    try:
        ctx, page = new_page(browser)
        page.goto(short.replace(base, base2))
        B.wait_rendered(page, RENDER_MS)
        url = page.url
        assert "dims=3" in url and "colour=A+correct" in url.replace("%20", "+") and "a=zoo" not in url
        page.wait_for_function("[...document.querySelectorAll('.js-plotly-plot')]"
                               ".filter(el => el._fullLayout && el._fullLayout.scene).length >= 2")  # 3-D views
        ctx.close()
    finally:
        B.stop_server(proc)


def test_exported_report_opens_offline_with_every_figure(browser, tmp_path):
    from analysis import report
    from analysis.spec import AnalysisSpec
    from analysis.views.outputs import headless, report_items

    items = []
    for spec in (AnalysisSpec("similarity", {"n": 80, "measure": "linear_cka"}),
                 AnalysisSpec("projections", {"n": 80, "dims": 2})):
        items += report_items(headless(spec))
    items[0]["notes"] = "**Bold** finding <script>window.injected = 1</script>"
    n_figures = sum(i["kind"] == "figure" for i in items)
    for presentation in (False, True):
        path = tmp_path / f"report-{presentation}.html"
        path.write_text(report.build_html(items, "Lab meeting", presentation=presentation))
        ctx, page = new_page(browser)
        requested = []
        ctx.route("**/*", lambda route: (requested.append(route.request.url), route.abort())
                  if not route.request.url.startswith("file:") else route.continue_())
        page.goto(path.as_uri())
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n_figures}")
        assert page.locator(".js-plotly-plot").count() == n_figures
        assert requested == []  # nothing fetched from the network
        assert page.evaluate("window.injected === undefined")  # notes cannot run scripts
        assert page.locator("strong", has_text="Bold").count() == 1
        assert page.locator("table").count() == sum(i["kind"] == "table" for i in items)
        ctx.close()
