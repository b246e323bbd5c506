"""Browser test of the working report (issue #15): pinned items survive a reload and a link opened in
the same tab, and the order set on the Report page is the order of the exported HTML and slides."""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

pytestmark = B.MARKS
RENDER_MS = 180_000


def _titles_in(html: str) -> list[str]:
    return re.findall(r"<h2[^>]*>(?:\d+\. )?([^<]+)</h2>", html)


def _download(page, button: str) -> str:
    with page.expect_download() as info:
        page.get_by_role("button", name=button).click()
    return Path(info.value.path()).read_text()


def test_pins_survive_a_reload_and_the_report_keeps_its_order(server, page):
    base, _ = server
    page.goto(f"{base}/similarity?n=120")
    B.wait_rendered(page, RENDER_MS)
    pins = page.get_by_role("button", name="Pin to report")
    pins.nth(0).click()  # the A-B map
    B.wait_rendered(page, RENDER_MS)
    pins.nth(1).click()  # the A-A map
    B.wait_rendered(page, RENDER_MS)

    page.reload()  # a new session in the same browser
    B.wait_rendered(page, RENDER_MS)
    page.goto(f"{base}/report")  # a link opened in the same tab
    B.wait_rendered(page, RENDER_MS)
    headers = page.locator("[data-testid='stMarkdownContainer'] strong").all_inner_texts()
    titled = [h for h in headers if h[:2] in ("1.", "2.")]
    assert len(titled) == 2 and "A (zoo:mlp-s0) vs B" in titled[0] and "A–A" in titled[1], titled

    page.get_by_role("button", name="↓").first.click()  # move the A-B map down
    B.wait_rendered(page, RENDER_MS)
    headers = [h for h in page.locator("[data-testid='stMarkdownContainer'] strong").all_inner_texts()
               if h[:2] in ("1.", "2.")]
    assert "A–A" in headers[0] and "vs B" in headers[1], headers
    for button in ("Download HTML report", "Download presentation"):
        html = _download(page, button)
        order = [t for t in _titles_in(html) if "A–A" in t or "vs B" in t]
        assert len(order) == 2 and "A–A" in order[0] and "vs B" in order[1], (button, order)
