"""Issue 20: on every page's default view, Plotly's toolbar (top right of each chart) covers no
title, subtitle, legend or annotation. Checked on the DOM bounding boxes in Chromium, after the
page's long sections were started with their buttons, so every chart of the default view is drawn.
(The Models page draws tables only.)"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

pytestmark = B.MARKS
RENDER_MS = 240_000
PAGES = ["/similarity", "/projections", "/functional-maps", "/vector-field", "/attributions", "/sae",
         "/training-dynamics", "/merge"]


@pytest.mark.parametrize("path", PAGES)
def test_the_toolbar_covers_no_title_legend_or_annotation(page, server, path):
    base_url, _ = server
    page.goto(base_url + path)
    B.wait_rendered(page, RENDER_MS)
    B.start_every_section(page, RENDER_MS)
    page.mouse.move(700, 500)  # the toolbar shows on hover; it is laid out either way
    overlaps, bars = page.evaluate(B.TOOLBAR_OVERLAPS_JS)
    assert not page.get_by_test_id("stException").count(), f"{path}: the page failed"
    assert bars >= 1, f"{path}: no chart drawn"
    assert not overlaps, overlaps
