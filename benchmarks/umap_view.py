"""How long does the UMAP view take, cold and warm, in a real browser; does numba's cache in the
store spare a restarted server the compiling; do the estimates hold?

    python benchmarks/umap_view.py [--root CHECKOUT] [--timeout 900]

Against one result store (fresh, in a temporary folder), with headless Chromium (tests/browser.py):

  cold      launch `streamlit run app.py`, open /projections?method=umap: every number computed and
            UMAP's code compiled (numba) for the first time;
  reopen    the same link in a new browser session on the same server (everything stored);
  restart   a new server on the same store, the same link (stored results, a fresh process);
  new view  on that restarted server, a UMAP the store does not hold (?method=umap&umap_k=14): UMAP
            runs in a process that has never compiled it, so what it does not compile comes from
            numba's cache in the store.

Each time runs from page.goto to the rendered page with both views drawn ("launch" also from the
server's launch). ``--root`` runs another checkout (e.g. an export of an older commit) for a
before/after comparison. Prints the times, the load average, and for the view's job the estimate
shown against the measured run time (the store's timing records, analysis.jobs.estimates).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import browser as B  # noqa: E402

LINK = "/projections?method=umap"
NEW_VIEW = "/projections?method=umap&umap_k=14"
TARGET_S = 30.0


def open_view(browser, base: str, path: str, timeout_s: float) -> float:
    """Seconds from opening ``path`` to the page rendered with both projections drawn."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    t0 = time.monotonic()
    page.goto(base + path)
    deadline = t0 + timeout_s
    while True:
        done = B.wait_rendered(page, 1000 * max(deadline - time.monotonic(), 1.0))
        if page.get_by_test_id("stPlotlyChart").count() >= 2:
            break
        button = page.get_by_role("button", name="Compute")
        if button.count():  # a job that waits for a button: a user would click it now
            button.first.click()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no projections after {timeout_s:.0f} s")
        page.wait_for_timeout(200)
    errors = [e.inner_text()[:200] for e in page.get_by_test_id("stException").all()]
    context.close()
    if errors:
        raise RuntimeError(f"{path}: {errors}")
    return done - t0


def estimates(store: Path) -> list[tuple[str, float, float]]:
    """(kind, estimated s, actual s) of every job recorded in the store (none for an older checkout)."""
    index = store / "index.sqlite"
    if not index.exists():
        return []
    with sqlite3.connect(index) as con:
        try:
            rows = con.execute("SELECT body FROM documents WHERE kind='timing'").fetchall()
        except sqlite3.OperationalError:
            return []
    out = []
    for (body,) in rows:
        doc = json.loads(body)
        out += [(doc["kind"], r["estimate"], r["actual"]) for r in doc["runs"]]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout to run (default: this one)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for one view (default 900)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("NUMBA_CACHE_DIR", None)  # the app's own choice (the store folder) is what is measured
    B.REPO_ROOT = args.root.resolve()

    from playwright.sync_api import sync_playwright

    store = Path(tempfile.mkdtemp(prefix="replens-umap-bench-"))
    times: dict[str, float] = {}
    try:
        with sync_playwright() as p:
            browser = B.launch_browser(p)
            for phase in ("first", "restarted"):
                launched = time.monotonic()
                proc, base = B.start_server(store_dir=store)
                try:
                    if phase == "first":
                        times["cold"] = open_view(browser, base, LINK, args.timeout)
                        times["cold, from launch"] = time.monotonic() - launched
                        times["reopen"] = open_view(browser, base, LINK, args.timeout)
                    else:
                        times["restart"] = open_view(browser, base, LINK, args.timeout)
                        times["new view"] = open_view(browser, base, NEW_VIEW, args.timeout)
                except Exception:
                    print(B.server_log(proc), file=sys.stderr)
                    raise
                finally:
                    B.stop_server(proc)
            browser.close()
        numba_dir = store / "numba"
        cached = sum(1 for _ in numba_dir.rglob("*.nbi")) if numba_dir.exists() else 0
        runs = estimates(store)
    finally:
        shutil.rmtree(store, ignore_errors=True)

    print(f"checkout: {args.root}  load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for name, seconds in times.items():
        print(f"  {name:<18}{seconds:8.1f} s")
    print(f"  numba functions cached in the store: {cached}")
    for kind, estimate, actual in runs:
        print(f"  job {kind}: estimated {estimate:.1f} s, took {actual:.1f} s (estimate / actual {estimate / actual:.2f})")
    print(f"UMAP view cold <= {TARGET_S:g} s: {'PASS' if times['cold'] <= TARGET_S else 'FAIL'} ({times['cold']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
