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
"first render target < 3 s: PASS/FAIL" (PASS when both the cold and the warm median are < 3 s).

The same run times a FLOOR: `streamlit run` of a two-line page (a title and a sentence) with the
same settings, launch -> rendered in the same browser. No app can render before that, so it is the
honest reference on a busy machine: the load average (printed) moves both numbers together.
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import browser as B  # noqa: E402

TARGET_S = 3.0
SWITCHES = ("zoo:cnn-s0", "zoo:mlp-ae-b8")
IMPORT_CMD = "import analysis, analysis.models, analysis.data, analysis.activations"
HELLO = 'import streamlit as st\nst.title("Hello")\nst.write("A bare Streamlit page: the floor of any app.")\n'


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
            # the rerun may start late on a busy server: idle before it began is not "rendered"
            page.wait_for_function("ref => (document.querySelector(\"[data-testid='stMain']\") || {innerText: ''})"
                                   ".innerText.includes(ref)", arg=ref, timeout=timeout_ms)
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


def measure_floor(browser, timeout_ms: float, port: int | None = None) -> float:
    """Seconds from launching `streamlit run` of a bare page (same settings: run from the repository
    root, so the shipped .streamlit/config.toml applies) to its first render."""
    port = port or B.free_port()
    folder = tempfile.mkdtemp(prefix="replens-bench-hello-")
    script = Path(folder) / "hello.py"
    script.write_text(HELLO)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
                             "--server.port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://localhost:{port}"
        deadline = t0 + timeout_ms / 1000
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare streamlit page did not start")
            time.sleep(0.1)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(url + "/")
        page.get_by_text("A bare Streamlit page").wait_for(timeout=timeout_ms)
        done = B.wait_rendered(page, timeout_ms) - t0
        context.close()
        return done
    finally:
        B.stop_server(proc)
        shutil.rmtree(folder, ignore_errors=True)


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
    floors: list[float] = []
    load_before = os.getloadavg()
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
                floors.append(measure_floor(browser, args.timeout * 1000, args.port))
                print(f"run {i + 1}/{args.runs} floor (bare streamlit page): first render {floors[-1]:.2f} s",
                      flush=True)
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
    floor = statistics.median(floors)
    print(f"{'floor: bare streamlit page -> first render':<{width}}{floor:>8.2f}{floor:>8.2f}")
    load = os.getloadavg()
    print(f"load average (1 min) {load_before[0]:.1f} before, {load[0]:.1f} after, on {os.cpu_count()} cores")
    cold, warm = med["cold"]["first render"], med["warm"]["first render"]
    ok = cold < TARGET_S and warm < TARGET_S
    print(f"first render target < {TARGET_S:g} s: {'PASS' if ok else 'FAIL'} "
          f"(cold {cold:.2f} s, warm {warm:.2f} s; the app over the floor: cold +{cold - floor:.2f} s, "
          f"warm +{warm - floor:.2f} s)")
    if floor >= TARGET_S:
        print(f"note: a bare streamlit page itself takes {floor:.2f} s on this machine now, over the target")
    print(f"sanity: python -c \"{IMPORT_CMD}\": {import_time():.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
