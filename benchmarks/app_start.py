"""How fast does the app come up, and how fast does it answer a new Model A, in a real browser?

    python benchmarks/app_start.py [--runs 3]

Each run starts `streamlit run app.py` twice on the same result store: first with a fresh, empty
store (COLD), then restarted on the store the first server filled (WARM; the process and its
st.cache_* are new, only the on-disk store and the OS file cache are warm). For each server it
measures, in headless Chromium (tests/browser.py):

  (i)  launch of `streamlit run` -> first fully rendered Models page (default view, no query);
  (ii) click on a new Model A in the sidebar -> rendered page, for zoo:cnn-s0 then zoo:mlp-ae-b8.

"Rendered" means tests/browser.wait_rendered: script done, no spinner / skeleton / running status,
timed at the start of the idle stretch. Prints the medians and the line
"first render target < 5 s: PASS/FAIL" (PASS when both the cold and the warm median are < 5 s).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import browser as B  # noqa: E402

TARGET_S = 5.0
SWITCHES = ("zoo:cnn-s0", "zoo:mlp-ae-b8")
IMPORT_CMD = "import analysis, analysis.models, analysis.data, analysis.activations"


def import_time() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORT_CMD], cwd=ROOT, check=True)
    return time.perf_counter() - t0


def measure(browser, store: str, timeout_ms: float, port: int | None = None) -> dict[str, float]:
    """One server on ``store``: seconds to healthy, to first render, and for each Model A switch."""
    out: dict[str, float] = {}
    t0 = time.monotonic()
    proc, url = B.start_server(port=port, store_dir=store)
    try:
        out["healthy"] = time.monotonic() - t0
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(url + "/")
        out["first render"] = B.wait_rendered(page, timeout_ms) - t0
        problems = _problems(page)
        for ref in SWITCHES:
            clicked = B.pick_selectbox(page, "Model A", ref)
            done = B.wait_rendered(page, timeout_ms)
            out[f"A -> {ref}"] = done - clicked
            main = page.get_by_test_id("stMain").inner_text()
            if f"`{ref}`" not in main and ref not in main:
                problems.append(f"{ref} not shown after the switch")
            problems += _problems(page)
        context.close()
        if problems:
            print(f"  ! problems on the page: {'; '.join(problems)}", file=sys.stderr)
    except Exception:
        print(B.server_log(proc), file=sys.stderr)
        raise
    finally:
        B.stop_server(proc)
    return out


def _problems(page) -> list[str]:
    return [e.inner_text()[:200] for e in page.get_by_test_id("stException").all()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="cold+warm pairs to take the median of (default 3)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds to wait for one render (default 120)")
    ap.add_argument("--port", type=int, default=None, help="port for the servers (default: a free one)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network while timing

    from playwright.sync_api import sync_playwright

    results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    with sync_playwright() as p:
        browser = B.launch_browser(p)  # started before the clock: only the app is timed
        try:
            for i in range(args.runs):
                store = tempfile.mkdtemp(prefix="replens-bench-store-")
                try:
                    for phase in ("cold", "warm"):
                        r = measure(browser, store, args.timeout * 1000, args.port)
                        results[phase].append(r)
                        print(f"run {i + 1}/{args.runs} {phase}: "
                              + ", ".join(f"{k} {v:.2f} s" for k, v in r.items()), flush=True)
                finally:
                    shutil.rmtree(store, ignore_errors=True)
        finally:
            browser.close()

    rows = list(results["cold"][0])
    med = {ph: {k: statistics.median(r[k] for r in results[ph]) for k in rows} for ph in results}
    labels = {k: {"healthy": "launch -> /_stcore/health ok", "first render": "launch -> first render (i)"}
              .get(k, f"select {k.replace('A -> ', 'Model A = ')} -> render (ii)") for k in rows}
    width = max(len(v) for v in labels.values()) + 2
    print()
    print(f"median of {args.runs} run(s), seconds")
    print(f"{'':<{width}}{'cold':>8}{'warm':>8}")
    for k in rows:
        print(f"{labels[k]:<{width}}{med['cold'][k]:>8.2f}{med['warm'][k]:>8.2f}")
    ok = med["cold"]["first render"] < TARGET_S and med["warm"]["first render"] < TARGET_S
    print(f"first render target < {TARGET_S:g} s: {'PASS' if ok else 'FAIL'} "
          f"(cold {med['cold']['first render']:.2f} s, warm {med['warm']['first render']:.2f} s)")
    print(f"sanity: python -c \"{IMPORT_CMD}\": {import_time():.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
