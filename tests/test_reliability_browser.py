"""Reliability in a real browser (Playwright + Debian's Chromium; heavy: marked ``browser``).

- 8 sessions at once against one server, running different analyses on the same and on different
  models (two of them the very same analysis, so the same store result is written twice): every
  heatmap equals the one-at-a-time library computation.
- The server killed (SIGKILL) in the middle of a long computation and restarted on the same store:
  the store is whole, the partial result absent, and the next request recomputes the same numbers.
- A hostile file through the real upload widget (set_input_files) and a link that used to crash
  the app (?n=1e400): one message each, the app stays usable.
Browser tests never skip when CI=true.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

expect = B.expect
pytestmark = B.MARKS  # browser mark; never skipped when CI=true

RENDER_MS = 240_000  # 8 sessions share 2 cores


def new_page(browser):
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    context.set_default_timeout(RENDER_MS)
    return context, context.new_page()


def no_exception(page, proc=None):
    exc = page.get_by_test_id("stException")
    if exc.count():
        pytest.fail("the app shows an exception:\n" + "\n---\n".join(e.inner_text() for e in exc.all())
                    + (f"\nserver log:\n{B.server_log(proc)}" if proc else ""))


HEATMAP_JS = """() => {
  const plot = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  if (!plot || !plot.data) return null;
  const h = plot.data.find(t => t.type === 'heatmap');
  const z = (h.z && h.z.bdata) ? h.z : Array.from(h.z, row => Array.from(row, v => v === null ? NaN : v));
  return {z: z, x: Array.from(h.x), y: Array.from(h.y)};
}"""


def _decode(z) -> np.ndarray:
    """Plotly 6 sends arrays as {dtype, bdata (base64), shape}; older ones as nested lists."""
    if isinstance(z, dict) and "bdata" in z:
        import base64

        arr = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"]))
        shape = z.get("shape")
        if isinstance(shape, str):
            shape = [int(s) for s in shape.split(",")]
        return arr.reshape(shape).astype(float)
    return np.array(z, dtype=float)


def heatmap(page) -> dict:
    page.get_by_test_id("stPlotlyChart").first.wait_for(state="attached")
    deadline = time.monotonic() + 30
    while (h := page.evaluate(HEATMAP_JS)) is None:
        assert time.monotonic() < deadline, "no heatmap drawn"
        page.wait_for_timeout(100)
    h["z"] = _decode(h["z"])
    return h


def library_matrix(a: str, b: str, measure: str, data: str, n: int, store_dir: Path):
    from analysis import data as data_mod
    from analysis import models, similarity
    from analysis.store import Store

    ds = data_mod.load(data, n=n, seed=0)
    df = similarity.layer_similarity(models.load(a), models.load(b), ds, measure, store=Store(store_dir))
    return df


SESSIONS = [  # (a, b, measure): same models, different models, one analysis twice at once
    ("zoo:mlp-s0", "zoo:mlp-s1", "linear_cka"),
    ("zoo:mlp-s0", "zoo:mlp-s1", "linear_cka"),
    ("zoo:mlp-s0", "zoo:mlp-s0", "debiased_linear_cka"),
    ("zoo:mlp-s0", "zoo:cnn-s0", "procrustes"),
    ("zoo:cnn-s0", "zoo:cnn-s1", "rsa"),
    ("zoo:mlp-s1", "zoo:cnn-s1", "svcca"),
    ("zoo:cnn-s0", "zoo:mlp-s0", "mutual_knn"),
    ("zoo:mlp-ae-b8", "zoo:mlp-s0", "linear_cka"),
]
N = 60


def test_eight_sessions_at_once_give_the_one_at_a_time_numbers(browser, tmp_path):
    proc, base = B.start_server(store_dir=tmp_path / "store")
    pages = []
    try:
        for a, b, measure in SESSIONS:  # all 8 requests are in flight before any is awaited
            ctx, page = new_page(browser)
            page.goto(f"{base}/similarity?a={a}&b={b}&measure={measure}&n={N}&pooling=mean", wait_until="commit")
            pages.append((ctx, page))
        t0 = time.monotonic()
        for ctx, page in pages:  # under this load the estimates may ask first: every go-ahead at once
            B.wait_rendered(page, RENDER_MS)
            waiting = page.get_by_test_id("stMain").get_by_role("button", name="Compute", exact=True)
            if waiting.count():
                waiting.first.click()
        shown = []
        for (ctx, page), session in zip(pages, SESSIONS):
            try:
                B.wait_rendered(page, RENDER_MS)
            except Exception as exc:
                raise AssertionError(f"{session} did not render: {exc}\n{B.server_log(proc)}")
            no_exception(page, proc)
            shown.append(heatmap(page))
        print(f"8 concurrent similarity sessions rendered in {time.monotonic() - t0:.1f} s")
        assert proc.poll() is None, "the server died"
    finally:
        for ctx, _ in pages:
            ctx.close()
        B.stop_server(proc)
    for (a, b, measure), got in zip(SESSIONS, shown):
        ref = library_matrix(a, b, measure, "digits", N, tmp_path / f"ref-{a}-{b}-{measure}")
        assert got["y"] == list(ref.index) and got["x"] == list(ref.columns), (a, b, measure)
        np.testing.assert_allclose(got["z"], ref.to_numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=f"{a} vs {b}, {measure}")


def test_server_killed_mid_computation_then_restarted_recomputes(browser, tmp_path):
    from analysis.store import Store

    store_dir = tmp_path / "store"
    url = "/similarity?a=zoo:mlp-s0&b=zoo:cnn-s0&data=digits_noisy&n=20000&measure=linear_cka&pooling=mean"  # minutes of work to interrupt
    proc, base = B.start_server(store_dir=store_dir)
    try:
        ctx, page = new_page(browser)
        page.goto(base + url)
        B.wait_rendered(page, RENDER_MS)
        no_exception(page, proc)
        page.get_by_role("button", name="Compute").click()  # long enough to ask first
        page.get_by_test_id("stProgress").first.wait_for(state="visible", timeout=60_000)
        page.wait_for_timeout(300)  # inside the computation (it takes seconds even on a fast machine)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        ctx.close()
    finally:
        B.stop_server(proc)

    store = Store(store_dir)
    assert store.keys("similarity") == []  # the partial result is absent
    for key in store.keys():
        assert store.get(key) is not None  # whatever is indexed is whole

    proc, base = B.start_server(store_dir=store_dir)
    try:
        ctx, page = new_page(browser)
        page.goto(base + url)
        B.wait_rendered(page, RENDER_MS)
        page.get_by_role("button", name="Compute").click()
        page.wait_for_timeout(500)
        B.wait_rendered(page, RENDER_MS)
        no_exception(page, proc)
        got = heatmap(page)
        ctx.close()
    finally:
        B.stop_server(proc)
    assert len(Store(store_dir).keys("similarity")) == 3  # A-B, A-A, B-B: recomputed and stored
    ref = library_matrix("zoo:mlp-s0", "zoo:cnn-s0", "linear_cka", "digits_noisy", 20000, tmp_path / "ref")
    np.testing.assert_allclose(got["z"], ref.to_numpy(), rtol=1e-9, atol=1e-12)


def test_hostile_upload_in_the_real_widget_and_a_crashing_link(browser, tmp_path):
    import io

    import torch

    from conftest import PickleExploit

    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"w": PickleExploit(marker)}, buf)
    evil = tmp_path / "model.pt"
    evil.write_bytes(buf.getvalue())
    proc, base = B.start_server(store_dir=tmp_path / "store")
    try:
        ctx, page = new_page(browser)
        page.goto(base + "/?n=1e400&seed=-inf")  # used to crash the whole script (int(inf))
        B.wait_rendered(page, RENDER_MS)
        no_exception(page, proc)
        expect(page.get_by_test_id("stMain").get_by_text("must be a finite number").first).to_be_visible()
        page.get_by_test_id("stSidebar").get_by_text("Upload a model or data").click()
        uploader = page.get_by_test_id("stFileUploader").first
        expect(uploader).to_contain_text("200MB")  # the limit is stated in the uploader
        uploader.locator("input[type=file]").set_input_files(str(evil))
        error = page.get_by_test_id("stSidebar").get_by_test_id("stAlert").filter(has_text="not a TorchScript file")
        expect(error.first).to_be_visible(timeout=60_000)
        B.wait_rendered(page, RENDER_MS)
        no_exception(page, proc)
        assert not marker.exists()
        B.pick_selectbox(page, "Model A", "zoo:cnn-s0")  # still usable
        B.wait_rendered(page, RENDER_MS)
        no_exception(page, proc)
        expect(page.get_by_test_id("stMain")).to_contain_text("zoo:cnn-s0")
        ctx.close()
    finally:
        B.stop_server(proc)
    from analysis.store import Store

    assert Store(tmp_path / "store").blobs() == []
