"""A shared server seen from a visitor's browser (Chromium), with every request that leaves
localhost blocked and recorded:

- share links to the Models page (full, short, and the default page) open the view without a
  "Page not found" dialog;
- the server, started as the README says (the shipped .streamlit/config.toml, no extra flags),
  makes the browser contact nothing outside (usage statistics off);
- a file uploaded through the sidebar widget under a Markdown "session expired" name, with
  Markdown/HTML layer names, a link value and a gallery title of the same kind are shown as
  text: no link or image to the attacker's host, no request to it.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

pytestmark = B.MARKS

EVIL = "evil.example"
FILE_NAME = "Session expired](https:evil.example) ![i](https:evil.example) **bold** www.evil.example.npz"
LAYER = "[log in](https://evil.example/login) <img src=https://evil.example/i.png>"
TITLE = "[Quarterly results](https://evil.example/r) ![t](https://evil.example/t.png)"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("shared-store")
    proc, base = B.start_server(store_dir=store_dir)
    yield base, proc, store_dir
    B.stop_server(proc)


@pytest.fixture
def visitor(browser):
    """A fresh browser context whose requests off localhost are recorded and aborted."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(120_000)
    outside = []

    def route(r):
        if urlsplit(r.request.url).hostname in ("localhost", "127.0.0.1"):
            return r.continue_()
        outside.append(r.request.url)
        return r.abort()

    ctx.route("**/*", route)
    page = ctx.new_page()
    page.outside = outside
    yield page
    ctx.close()


def _open(page, url: str):
    page.goto(url)
    B.wait_rendered(page, timeout_ms=120_000)
    page.wait_for_timeout(300)


def _no_page_not_found(page):
    assert page.get_by_text("Page not found").count() == 0
    assert page.get_by_role("dialog").count() == 0


def test_models_share_links_open_without_a_page_not_found_dialog(shared, visitor):
    from analysis.spec import AnalysisSpec
    from analysis.store import Store

    base, proc, store_dir = shared
    spec = AnalysisSpec("models", {"b": "zoo:cnn-s0", "n": 120})
    links = [spec.url(base), f"{base}/?b=zoo%3Acnn-s0&n=120", spec.short_url(base, Store(store_dir))]
    assert urlsplit(links[0]).path == "/models" and urlsplit(links[2]).path == "/models"
    for link in links:
        _open(visitor, link)
        _no_page_not_found(visitor)
        assert visitor.locator("h1").first.inner_text() == "Models"
        assert B.selectbox_value(visitor, "Model B") == "zoo:cnn-s0", link
        assert visitor.get_by_test_id("stException").count() == 0
    assert visitor.outside == []  # nothing left localhost: no usage statistics, no fonts, no CDN


def test_hostile_names_from_the_upload_widget_links_and_gallery_are_text(shared, visitor):
    from analysis.store import Store

    base, proc, store_dir = shared
    _open(visitor, f"{base}/")
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, **{LAYER: rng.normal(size=(597, 6)), "plain": rng.normal(size=(597, 3))})  # digits' test split
    visitor.get_by_text("Upload a model or data").click()
    visitor.locator("[data-testid='stSidebar'] input[type='file']").first.set_input_files(
        {"name": FILE_NAME, "mimeType": "application/octet-stream", "buffer": buf.getvalue()})
    visitor.wait_for_function("() => [...document.querySelectorAll('[data-testid=stSidebar] input[role=combobox]')]"
                              ".some(e => e.value.startsWith('upload:'))", timeout=120_000)
    B.wait_rendered(visitor, timeout_ms=120_000)
    body = visitor.inner_text("body")
    assert "Session expired](https:evil.example) ![i](https:evil.example) **bold**" in body  # shown as written
    assert "[log in](https://evil.example/login) <img src=https://evil.example/i.png>" in body  # the layer name

    Store(store_dir).put_doc("report", "00aa00aa00aa00aa", {"title": TITLE, "items": []}, name=TITLE)
    for url in (f"{base}/models?data={quote(f'[x](https://{EVIL}) www.{EVIL}')}", f"{base}/report"):
        _open(visitor, url)
        body += visitor.inner_text("body")
        assert visitor.locator(f"a[href*='{EVIL}']").count() == 0
    assert "[Quarterly results](https://evil.example/r)" in body and f"[x](https://{EVIL}) www.{EVIL}" in body
    for page_html in (visitor.content(),):
        assert f'href="https://{EVIL}' not in page_html and f'src="https://{EVIL}' not in page_html
    assert visitor.locator(f"img[src*='{EVIL}']").count() == 0
    assert [u for u in visitor.outside if EVIL in u] == [] and visitor.outside == []
