"""A Similarity link with more samples than fit in memory (n=30,000): the sidebar keeps the count,
Compute runs the streamed path, and the page shows the maps with the note saying how they were
computed. Needs Playwright and Debian's Chromium (tests/browser.py); one server, its own store."""
from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

expect = B.expect
pytestmark = B.MARKS
WAIT_MS = 300_000  # two models over 30,000 rows into the activation cache, then the maps, on 2 busy cores


@pytest.mark.browser
def test_similarity_link_with_30000_samples_streams_and_says_so(page, server):
    base_url, proc = server
    page.set_default_timeout(WAIT_MS)
    page.goto(base_url + "/similarity?data=digits_noisy&n=30000&layers_a=net.fc1&layers_a=net.fc3"
                         "&layers_b=net.fc1&layers_b=net.fc3")
    B.wait_rendered(page, WAIT_MS)
    B.start_every_section(page, WAIT_MS)
    exc = page.get_by_test_id("stException")
    assert not exc.count(), "\n".join(e.inner_text() for e in exc.all()) + B.server_log(proc)
    main = page.get_by_test_id("stMain")
    samples = page.get_by_test_id("stSidebar").get_by_test_id("stNumberInput").filter(has_text="Samples")
    expect(samples.locator("input")).to_have_value("30000")
    expect(main.get_by_test_id("stAlert").filter(has_text="exact over all 30,000 samples")).to_be_visible()
    expect(main).to_contain_text("streamed from the activation cache")
    heatmap = main.get_by_test_id("stPlotlyChart").first
    heatmap.scroll_into_view_if_needed()
    expect(heatmap.locator(".heatmaplayer, .hm").first).to_be_attached()
    expect(main).to_contain_text("the scatter draws 5,000 of them")  # the drill-down's subsample
    assert parse_qs(urlsplit(page.url).query).get("n") == ["30000"], page.url
