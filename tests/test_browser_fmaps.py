"""The Functional maps page in a real browser: a share link restores the view, the figures draw,
a widget change lands in the address, and the retrieval button runs the sweep.

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
RENDER_MS = 120_000


def _query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def test_functional_maps_link_figures_url_and_retrieval(page, server):
    base_url, proc = server
    page.goto(f"{base_url}/functional-maps?n=150&fm_anchors=12&fm_select=farthest-point")
    try:
        B.wait_rendered(page, RENDER_MS)
    except Exception as exc:
        raise AssertionError(f"page did not render: {exc}\n{B.server_log(proc)}")
    assert page.get_by_test_id("stException").count() == 0
    main = page.get_by_test_id("stMain")
    expect(main).to_contain_text("Estimated C (12 anchors, farthest-point)")  # the link's values were applied
    expect(page.get_by_test_id("stMetricLabel").filter(has_text="LFM similarity")).to_be_visible()
    assert page.get_by_test_id("stPlotlyChart").count() >= 4  # C, spectra, embeddings, stitching

    # change the anchor budget: the address follows
    box = main.get_by_test_id("stNumberInput").filter(has_text="Anchors").locator("input")
    box.fill("8")
    box.press("Enter")
    B.wait_rendered(page, RENDER_MS)
    expect(page).to_have_url(re.compile(r"[?&]fm_anchors=8(&|$)"))
    expect(main).to_contain_text("Estimated C (8 anchors, farthest-point)")

    # the retrieval sweep: a button (with a time estimate) unless it is quick or stored
    button = page.get_by_role("button", name=re.compile(r"^Compute retrieval"))
    if button.count():
        button.click()
        B.wait_rendered(page, RENDER_MS)
    expect(main.get_by_text("LFM + ortho (dense matches)").first).to_be_visible()
    assert page.get_by_test_id("stException").count() == 0
    assert _query(page).get("fm_select") == "farthest-point"
