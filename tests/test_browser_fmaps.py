"""The Functional maps page in a real browser: a share link restores the view, the figures draw
with their titles, a widget change lands in the address, the retrieval button runs the sweep, and
a long job stops when its tab closes (issue #14: it used to run on for over 21 minutes).

Needs playwright and Debian's Chromium (/usr/bin/chromium); never skipped when CI=true.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

expect = B.expect
sync_playwright = B.sync_playwright
pytestmark = B.MARKS
RENDER_MS = 180_000


def _query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def test_functional_maps_link_figures_url_and_retrieval(page, server):
    base_url, proc = server
    page.goto(f"{base_url}/functional-maps?n=150&fm_anchors=12&fm_select=farthest-point")
    try:
        B.wait_rendered(page, RENDER_MS)
        _compute(page, "Compute")  # the map waits for a button when this machine made it look long
    except Exception as exc:
        raise AssertionError(f"page did not render: {exc}\n{B.server_log(proc)}")
    assert page.get_by_test_id("stException").count() == 0
    main = page.get_by_test_id("stMain")
    # the link's values were applied, and every figure says what it shows
    expect(main).to_contain_text("Functional map C: A zoo:mlp-s0 · net.relu3 → B zoo:mlp-s1 · net.relu3")
    expect(main).to_contain_text("estimated from 12 farthest-point anchors")
    expect(main).to_contain_text("Zero-shot stitching: A zoo:mlp-s0 · net.relu3 → B zoo:mlp-s1 · net.relu3")
    expect(page.get_by_test_id("stMetricLabel").filter(has_text="LFM similarity")).to_be_visible()
    assert page.get_by_test_id("stPlotlyChart").count() >= 4  # C, spectra, embeddings, stitching

    # change the anchor budget: the address follows
    box = main.get_by_test_id("stNumberInput").filter(has_text="Anchors").locator("input")
    box.fill("8")
    box.press("Enter")
    B.wait_rendered(page, RENDER_MS)
    _compute(page, "Compute")
    expect(page).to_have_url(re.compile(r"[?&]fm_anchors=8(&|$)"))
    expect(main).to_contain_text("estimated from 8 farthest-point anchors")

    # the retrieval sweep: a button (with a time estimate) unless it is quick or stored
    _compute(page, "Compute retrieval")
    expect(main.get_by_text("LFM + ortho (dense matches)").first).to_be_visible()
    assert page.get_by_test_id("stException").count() == 0
    assert _query(page).get("fm_select") == "farthest-point"


def test_a_link_value_that_cannot_work_is_replaced_on_screen_and_in_the_address(page, server):
    base_url, proc = server
    page.goto(f"{base_url}/functional-maps?n=150&fm_anchors=5000")
    B.wait_rendered(page, RENDER_MS)
    main = page.get_by_test_id("stMain")
    expect(main).to_contain_text("5000 anchors is more than half of the 150 samples: using 75.")
    box = main.get_by_test_id("stNumberInput").filter(has_text="Anchors").locator("input")
    expect(box).to_have_value("75")  # the widget shows what the view uses ...
    expect(page).to_have_url(re.compile(r"[?&]fm_anchors=75(&|$)"))  # ... and so does the address


def _compute(page, label: str) -> None:
    """Click the section's Compute button if the page shows one (estimates learn from this machine's
    earlier runs, so a short section may still ask), and wait for its result."""
    button = page.get_by_role("button", name=label, exact=True)
    if button.count():
        button.first.click()
        B.wait_rendered(page, RENDER_MS)


# ------------------------------------------------------------------ a closed tab stops its job
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def _descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cpu_ticks(pid: int) -> int | None:
    """User + system CPU ticks of a live process (None once it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[11]) + int(fields[12])


def _busiest(pid: int, window_s: float = 4.0) -> tuple[int, int]:
    """The descendant of ``pid`` that used the most CPU over ``window_s``, and how many ticks."""
    before = {p: _cpu_ticks(p) for p in _descendants(pid)}
    time.sleep(window_s)
    used = {p: (_cpu_ticks(p) or 0) - (t or 0) for p, t in before.items() if _cpu_ticks(p) is not None}
    return max(used.items(), key=lambda kv: kv[1]) if used else (0, 0)


def test_closing_the_tab_stops_a_long_functional_map(browser, tmp_path):
    # a server of its own: its estimates have learned nothing from other tests' runs
    proc, base_url = B.start_server(store_dir=tmp_path / "store")
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(120_000)
        page = context.new_page()
        page.goto(f"{base_url}/functional-maps?n=597&fm_eigs=180&fm_anchors=250")  # minutes of work
        B.wait_rendered(page, RENDER_MS)
        main = page.get_by_test_id("stMain")
        expect(main).to_contain_text("Will compute the functional map")  # announced, not started
        main.get_by_role("button", name="Compute", exact=True).first.click()
        page.get_by_test_id("stProgress").first.wait_for(state="visible", timeout=60_000)
        time.sleep(6)  # the quick sections (stitching) are done by now; the map's job is still running
        worker, ticks = _busiest(proc.pid)
        assert ticks > 50, f"no worker busy with the map ({ticks} ticks)\n{B.server_log(proc)}"
        context.close()  # the browser session ends
        deadline = time.monotonic() + 30
        while _cpu_ticks(worker) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _cpu_ticks(worker) is None, "the worker still runs the map 30 s after its tab closed"
    finally:
        B.stop_server(proc)
