"""The Merge & stitch page in a real browser: a link's values apply, alignment and interpolation
draw, the merged model becomes model B, and a share link naming the merged model opens it on the
Similarity page in a fresh browser session.

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
pytestmark = B.MARKS
RENDER_MS = 240_000


def _query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def _render(page, proc) -> None:
    try:
        B.wait_rendered(page, RENDER_MS)
    except Exception as exc:
        raise AssertionError(f"page did not render: {exc}\n{B.server_log(proc)}")
    assert page.get_by_test_id("stException").count() == 0, B.server_log(proc)


def test_merge_link_alignment_merged_model_and_its_share_link(browser, page, server):
    base_url, proc = server
    page.goto(f"{base_url}/merge?n=200&mg_steps=5&mg_alpha=0.4")
    _render(page, proc)
    main = page.get_by_test_id("stMain")
    merged = main.get_by_text(re.compile(r"Merged model merge:[0-9a-f]{16} at alpha = 0\.4"))
    for _ in range(3):  # long sections wait for their button (how long depends on the machine's load)
        if merged.count():
            break
        button = main.get_by_role("button", name="Compute")
        if button.count() == 0:
            break
        button.first.click()
        _render(page, proc)
    expect(merged.first).to_be_visible()
    expect(page.get_by_test_id("stMetricLabel").filter(has_text="Barrier, B aligned")).to_be_visible()
    assert page.get_by_test_id("stPlotlyChart").count() >= 1
    ref = re.search(r"merge:[0-9a-f]{16}", merged.first.inner_text()).group(0)

    page.get_by_role("button", name="Use it as model B").click()
    _render(page, proc)
    assert B.selectbox_value(page, "Model B") == ref
    expect(page).to_have_url(re.compile(r"[?&]b=merge%3A[0-9a-f]{16}(&|$)"))

    # a share link naming the merged model, opened in a fresh session, shows it on the Similarity page
    fresh = browser.new_context(viewport={"width": 1400, "height": 1000})
    fresh.set_default_timeout(RENDER_MS)
    other = fresh.new_page()
    try:
        other.goto(f"{base_url}/similarity?a=zoo%3Amlp-s0&b={ref.replace(':', '%3A')}&n=200")
        _render(other, proc)
        assert B.selectbox_value(other, "Model B") == ref
        assert _query(other).get("b") == ref
        expect(other.get_by_test_id("stPlotlyChart").first).to_be_visible()
        expect(other.get_by_test_id("stMain")).to_contain_text(ref)
    finally:
        fresh.close()
