"""A lab server: two app processes on different ports sharing one store (a PostgreSQL index and one
folder), as two machines behind a load balancer would. A view computed on one opens on the other
with identical figures and without computing again; a short link made on one opens on the other;
a report saved on one is in the other's gallery and opens there."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402
from tests.test_browser_share import FIGURE_JS, new_page, share_links  # noqa: E402

pytestmark = B.MARKS
RENDER_MS = 240_000
VIEW = "/similarity?measure=rbf_cka&n=100&seed=4"


def _figures(page) -> list:
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3")
    return page.evaluate(FIGURE_JS)[:3]


def _differences(first: list, got: list) -> list:
    """Which figure, trace and field differ (for the failure message)."""
    import json

    out = []
    for f, (a, b) in enumerate(zip(first, got)):
        for t, (ta, tb) in enumerate(zip(json.loads(a), json.loads(b))):
            out += [(f, t, field) for field, x, y in zip(("type", "z", "x", "y"), ta, tb) if x != y]
    return out


def test_two_app_processes_share_one_postgresql_store(browser, postgres_server, tmp_path, monkeypatch):
    from analysis.store import Store

    url = postgres_server.new_database()
    shared = tmp_path / "shared"
    monkeypatch.setenv("REPLENS_DATABASE_URL", url)  # start_server passes the environment on
    one, base1 = B.start_server(store_dir=shared)
    two = None
    try:
        two, base2 = B.start_server(store_dir=shared)
        assert base1 != base2
        ctx, page = new_page(browser)
        page.goto(base1 + VIEW)
        B.wait_rendered(page, RENDER_MS)
        first = _figures(page)
        full, short = share_links(page)
        ctx.close()
        store = Store(shared, url)
        computed = {k: store.meta(k) for k in store.keys()}
        assert computed, "the first server stored its results"

        for link in (base2 + VIEW, short.replace(base1, base2)):  # the same view, then the short link
            ctx, page = new_page(browser)
            page.goto(link)
            B.wait_rendered(page, RENDER_MS)
            got = _figures(page)
            assert "measure=rbf_cka" in page.url and "seed=4" in page.url
            ctx.close()
            assert {k: store.meta(k) for k in store.keys()} == computed, link  # read from the shared store
            assert got == first, (link, _differences(first, got))

        ctx, page = new_page(browser)  # a report saved on the first server ...
        page.goto(base1 + VIEW)
        B.wait_rendered(page, RENDER_MS)
        page.get_by_role("button", name="Pin to report").first.click()
        B.wait_rendered(page, RENDER_MS)
        page.goto(base1 + "/report")
        B.wait_rendered(page, RENDER_MS)
        page.get_by_label("Title").fill("Seeds on the lab server")
        page.get_by_label("Title").press("Enter")
        B.wait_rendered(page, RENDER_MS)
        page.get_by_role("button", name="Save to the gallery").click()
        B.wait_rendered(page, RENDER_MS)
        ctx.close()

        ctx, page = new_page(browser)  # ... is in the second server's gallery, and opens there
        page.goto(base2 + "/report")
        B.wait_rendered(page, RENDER_MS)
        saved = page.get_by_role("link", name="Seeds on the lab server")
        saved.wait_for(state="visible")
        assert saved.get_attribute("href").startswith(base2 + "/report?report=")
        page.goto(saved.get_attribute("href"))
        B.wait_rendered(page, RENDER_MS)
        headers = page.locator("[data-testid='stMarkdownContainer'] strong").all_inner_texts()
        assert any(h.startswith("1.") and "vs B" in h for h in headers), headers
        ctx.close()
    finally:
        B.stop_server(one)
        if two is not None:
            B.stop_server(two)
