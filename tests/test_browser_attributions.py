"""The Attributions page in a real browser: the default view draws both models' relevance maps with
the library's numbers; choosing a rule in the page re-draws them and lands in the address; a share
link with a rule and samples restores that view; an uploaded picture lands in the address as an id;
Plotly's toolbar covers no title, legend or annotation, and no token of the text map is cut (issue 20)."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

expect = B.expect
sync_playwright = B.sync_playwright
pytestmark = B.MARKS
RENDER_MS = 180_000

# The relevance heatmaps of every chart, as nested lists (Plotly keeps typed arrays; decode them).
MAPS_JS = """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')].map(el =>
    el.data.filter(t => t.name === 'relevance').map(t => {
        const z = t.z;
        if (Array.isArray(z)) return z.flat();
        if (z && z.bdata) { const s = atob(z.bdata); const b = new Uint8Array(s.length);
            for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
            return Array.from(z.dtype === 'f4' ? new Float32Array(b.buffer) : new Float64Array(b.buffer)); }
        return Array.from(z).flat();
    }))"""


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    context.set_default_timeout(RENDER_MS)
    pg = context.new_page()
    yield pg
    context.close()


def _open(page, server, path):
    base_url, proc = server
    page.goto(base_url + path)
    try:
        B.wait_rendered(page, RENDER_MS)
    except Exception as exc:
        raise AssertionError(f"{path} did not finish rendering: {exc}\nserver log:\n{B.server_log(proc)}")
    B.start_every_section(page, RENDER_MS)  # a busy machine's estimates may pass the auto-run limit
    exc = page.get_by_test_id("stException")
    if exc.count():
        pytest.fail("the app shows an exception:\n" + exc.first.inner_text())


def _main_selectbox(page, label):
    exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
    return (page.locator("[data-testid='stMain'] [data-testid='stSelectbox']"
                         ":not([data-stale='true'] [data-testid='stSelectbox'])")
            .filter(has=page.get_by_test_id("stWidgetLabel").filter(has_text=exact)))


def _pick(page, label, option):
    box = _main_selectbox(page, label)
    listbox = page.get_by_role("listbox", name=label)
    for _ in range(5):  # a rerun that lands just after the click (a job finishing) closes the list again
        B.wait_rendered(page, RENDER_MS)
        box.get_by_role("button", name="Open").click()
        try:
            listbox.wait_for(state="visible", timeout=5_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: open it again
            continue
    listbox.get_by_role("option").filter(has_text=re.compile(rf"^\s*{re.escape(option)}\s*$")).first.click()
    deadline = time.monotonic() + 30
    while box.get_by_role("combobox").input_value() != option:
        assert time.monotonic() < deadline, f"{label} did not switch to {option}"
        page.wait_for_timeout(50)


def _maps(page) -> list[np.ndarray]:
    return [np.asarray(m, dtype=float) for chart in page.evaluate(MAPS_JS) for m in chart]


OVERLAPS_JS = B.TOOLBAR_OVERLAPS_JS
# Tokens of the text relevance map whose text is wider than its box (cut or spilling over)
CUT_TOKENS_JS = """() => {
  const out = [];
  let n = 0;
  for (const point of document.querySelectorAll("[data-testid='stPlotlyChart'] .trace.bars .point")) {
    const bar = point.querySelector('path'), text = point.querySelector('text');
    if (!bar || !text) continue;
    n += 1;
    const b = bar.getBoundingClientRect(), t = text.getBoundingClientRect();
    if (t.width > b.width + 0.5 || t.left < b.left - 0.5 || t.right > b.right + 0.5) out.push(text.textContent);
  }
  return [out, n];
}"""


def _expected(rule: str, rows: list[int]) -> dict:
    from analysis import data, lrp, models

    x = data.load("digits", n=500).inputs[rows]
    return {ref: lrp.attribute(models.load(ref), x, "predicted", rule=rule).input_relevance
            for ref in ("zoo:mlp-s0", "zoo:mlp-s1")}


def test_default_view_then_a_rule_chosen_in_the_page(page, server):
    _open(page, server, "/attributions")
    expect(page.get_by_test_id("stMain")).to_contain_text("Over the dataset")
    maps = _maps(page)
    assert len(maps) == 12  # six samples for each model
    expected = _expected("gamma", list(range(6)))  # the default rule (issue 20)
    np.testing.assert_allclose(np.stack(maps[:6]), expected["zoo:mlp-s0"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.stack(maps[6:]), expected["zoo:mlp-s1"], rtol=1e-4, atol=1e-6)
    expect(page.get_by_test_id("stMetricLabel").filter(has_text="Rank agreement").first).to_be_visible()
    page.mouse.move(700, 600)  # the toolbar shows on hover; it is laid out either way
    overlaps, bars = page.evaluate(OVERLAPS_JS)
    assert bars >= 6 and not overlaps, overlaps  # maps A and B, agreement, conservation, faithfulness, units

    _pick(page, "Rule or composite", "zplus")
    B.wait_rendered(page, RENDER_MS)
    assert parse_qs(urlsplit(page.url).query).get("at_rule") == ["zplus"], page.url
    expected = _expected("zplus", list(range(6)))
    np.testing.assert_allclose(np.stack(_maps(page)[:6]), expected["zoo:mlp-s0"], rtol=1e-4, atol=1e-6)


def test_share_link_restores_rule_and_samples(page, server):
    _open(page, server, "/attributions?at_rule=epsilon-gamma-box&at_samples=9&at_samples=4")
    assert _main_selectbox(page, "Rule or composite").get_by_role("combobox").input_value() == "epsilon-gamma-box"
    maps = _maps(page)
    assert len(maps) == 4
    from analysis import data, lrp, models

    x = data.load("digits", n=500).inputs[[9, 4]]
    expected = lrp.attribute(models.load("zoo:mlp-s0"), x, "predicted", composite="epsilon-gamma-box")
    np.testing.assert_allclose(np.stack(maps[:2]), expected.input_relevance, rtol=1e-4, atol=1e-6)


def test_an_uploaded_picture_is_explained_next_to_the_samples(page, server, tmp_path):
    """The picture is kept in the store by content hash; the address carries its id, never its bytes."""
    from PIL import Image

    from analysis import lrp, models

    img = np.full((64, 64), 255, np.uint8)  # a dark "1" on white paper
    img[8:56, 28:36] = 0
    Image.fromarray(img).save(tmp_path / "one.png")
    _open(page, server, "/attributions?at_samples=0")
    page.locator("[data-testid='stMain'] [data-testid='stFileUploaderDropzoneInput']").first.set_input_files(
        str(tmp_path / "one.png"))
    deadline = time.monotonic() + 60
    while len(_maps(page)) != 4:  # (sample 0, upload) x (A, B)
        assert time.monotonic() < deadline, f"{len(_maps(page))} maps after the upload"
        page.wait_for_timeout(200)
    B.wait_rendered(page, RENDER_MS)
    row = lrp.image_from_upload((tmp_path / "one.png").read_bytes(), "one.png")
    expected = lrp.attribute(models.load("zoo:mlp-s0"), row, "predicted", rule="gamma").input_relevance
    np.testing.assert_allclose(_maps(page)[1], expected[0], rtol=1e-4, atol=1e-6)
    expect(page.get_by_test_id("stMain")).to_contain_text("upload → class")
    picture = parse_qs(urlsplit(page.url).query).get("at_upload")
    assert picture and re.fullmatch(r"[0-9a-f]{16}", picture[0]) and len(page.url) < 1500, page.url
    # the link opens the same view in a fresh tab: the picture comes from the server's store
    other = page.context.new_page()
    _open(other, server, urlsplit(page.url).path + "?" + urlsplit(page.url).query)
    np.testing.assert_allclose(_maps(other)[1], expected[0], rtol=1e-4, atol=1e-6)
    other.close()


def test_text_tokens_are_never_cut(page, server):
    _open(page, server, "/attributions?data=text&a=hf%3Aminilm&b=hf%3Aminilm-random&n=40&at_rule=epsilon"
                        "&at_sentences=2&at_sentences=3")
    compute = page.get_by_test_id("stMain").get_by_role("button", name="Compute")
    if compute.count():  # the probes' first fit waits for the button
        compute.first.click()
        page.wait_for_timeout(1000)
        B.wait_rendered(page, RENDER_MS)
    expect(page.get_by_test_id("stMain")).to_contain_text("Token relevance")
    cut, boxes = page.evaluate(CUT_TOKENS_JS)
    assert boxes > 20 and not cut, cut  # e.g. "marathon", "kilometer", "##th" used to be clipped
    overlaps, _ = page.evaluate(OVERLAPS_JS)
    assert not overlaps, overlaps
