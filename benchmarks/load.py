"""Load benchmark: N concurrent browser sessions against one RepLens server on loopback.

Each session (its own browser context, so its own Streamlit session) opens analyses one after the
other (similarity maps under several measures, projections, the models page) and waits until the
page is done. Reported: completed analyses, errors (exceptions shown, time-outs), median and worst
latency, the server's peak memory, and the ratio against running the same analyses one at a time
on a fresh server (the way one user works): wall time and median latency.

    python benchmarks/load.py                     # 8 sessions x 2 analyses, n = 60 samples
    python benchmarks/load.py --sessions 16 --rounds 3 --n 200
    python benchmarks/load.py --cached            # a cached view's latency while 7 sessions compute

``--cached`` answers issue #15's question: one session reopens a view that is already in the store
while the other sessions run uncached analyses; its median and worst latency are compared with the
same view opened with nothing else running. Computations run in job workers, not in the server's
script threads, so the cached view should not wait behind them.

Needs playwright (Python package) and Chromium at /usr/bin/chromium. Each pass gets a fresh result
store, so every analysis is computed, not read back.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

ANALYSES = [
    "/similarity?a=zoo:mlp-s0&b=zoo:mlp-s1&measure=linear_cka",
    "/similarity?a=zoo:mlp-s0&b=zoo:cnn-s0&measure=procrustes",
    "/similarity?a=zoo:cnn-s0&b=zoo:cnn-s1&measure=rsa",
    "/projections?a=zoo:mlp-s0&b=zoo:mlp-s1&method=pca",
    "/similarity?a=zoo:mlp-s1&b=zoo:cnn-s1&measure=svcca",
    "/?a=zoo:mlp-ae-b8&b=zoo:cnn-s0",
    "/similarity?a=zoo:mlp-s0&b=zoo:mlp-s0&measure=debiased_linear_cka",
    "/projections?a=zoo:cnn-s0&b=zoo:mlp-s0&method=pca&dims=3",
]


class MemoryWatch(threading.Thread):
    """Samples the server's resident memory; the kernel's own high-water mark (VmHWM) is read too."""

    def __init__(self, pid: int, every_s: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.every_s, self.peak, self.stop = pid, every_s, 0, threading.Event()

    def _status(self, field: str) -> int:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self._status("VmRSS"))
            self.stop.wait(self.every_s)

    def high_water(self) -> int:
        return max(self.peak, self._status("VmHWM"))


async def _wait_rendered(page, timeout_s: float, settle_s: float = 0.5) -> None:
    await page.wait_for_selector(B.APP_DONE, state="attached", timeout=timeout_s * 1000)
    deadline, idle_since = time.monotonic() + timeout_s, None
    while True:
        busy = await page.evaluate(B._BUSY_JS)
        now = time.monotonic()
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= settle_s:
            return
        if now > deadline:
            raise TimeoutError(f"not idle after {timeout_s:.0f} s ({busy or 'settling'})")
        await asyncio.sleep(0.05)


async def _session(browser, base: str, paths: list[str], n: int, timeout_s: float, results: list):
    context = await browser.new_context(viewport={"width": 1300, "height": 900})
    page = await context.new_page()
    try:
        for path in paths:
            url = f"{base}{path}{'&' if '?' in path else '?'}n={n}" if n else f"{base}{path}"
            t0 = time.monotonic()
            error = None
            try:
                await page.goto(url)
                await _wait_rendered(page, timeout_s)
                shown = await page.locator("[data-testid='stException']").count()
                if shown:
                    error = "exception: " + (await page.locator("[data-testid='stException']").first.inner_text())[:200]
            except Exception as exc:  # a time-out or a broken page counts as an error, the run goes on
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
            results.append({"path": path, "seconds": time.monotonic() - t0, "error": error})
    finally:
        await context.close()


async def _run(base: str, sessions: int, rounds: int, n: int, timeout_s: float, concurrent: bool) -> list:
    from playwright.async_api import async_playwright

    results: list = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=B.CHROMIUM, args=B.CHROMIUM_ARGS, headless=True)
        plans = [[ANALYSES[(s + r * sessions) % len(ANALYSES)] for r in range(rounds)] for s in range(sessions)]
        if concurrent:
            await asyncio.gather(*(_session(browser, base, plan, n, timeout_s, results) for plan in plans))
        else:  # one user at a time: the same analyses, in the same order, sequentially
            for plan in plans:
                await _session(browser, base, plan, n, timeout_s, results)
        await browser.close()
    return results


def one_pass(sessions: int, rounds: int, n: int, timeout_s: float, concurrent: bool) -> dict:
    store = tempfile.mkdtemp(prefix="replens-load-")
    proc, base = B.start_server(store_dir=store, timeout_s=120)
    watch = MemoryWatch(proc.pid)
    watch.start()
    try:
        time.sleep(2.0)  # let the server's warm-up thread finish importing torch
        idle_rss = watch._status("VmRSS")
        t0 = time.monotonic()
        results = asyncio.run(_run(base, sessions, rounds, n, timeout_s, concurrent))
        wall = time.monotonic() - t0
        alive = proc.poll() is None
    finally:
        watch.stop.set()
        watch.join()
        peak = watch.high_water()
        B.stop_server(proc)
    ok = [r for r in results if r["error"] is None]
    secs = sorted(r["seconds"] for r in ok)
    return {"wall": wall, "completed": len(ok), "errors": [r for r in results if r["error"]],
            "median": statistics.median(secs) if secs else float("nan"), "worst": secs[-1] if secs else float("nan"),
            "peak_mb": peak / 2**20, "idle_mb": idle_rss / 2**20, "server_alive": alive, "total": len(results)}


CACHED = "/similarity?a=zoo:mlp-s0&b=zoo:mlp-s1&measure=linear_cka&n=300"
HEAVY = [f"/similarity?a=zoo:cnn-s0&b=zoo:mlp-s{s % 3}&measure={m}&data=digits_noisy&n={n}"
         for s, (m, n) in enumerate([("rsa", 1500), ("svcca", 3000), ("procrustes", 3000), ("rsa", 1800),
                                     ("mutual_knn", 2500), ("pwcca", 3000), ("rsa", 2100)])]


async def _reopen(browser, base: str, times: int, timeout_s: float, out: list) -> None:
    context = await browser.new_context(viewport={"width": 1300, "height": 900})
    page = await context.new_page()
    try:
        for _ in range(times):
            t0 = time.monotonic()
            await page.goto(base + CACHED)
            await _wait_rendered(page, timeout_s)
            await page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3")
            out.append(time.monotonic() - t0)
    finally:
        await context.close()


async def _cached_run(base: str, others: int, times: int, timeout_s: float) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=B.CHROMIUM, args=B.CHROMIUM_ARGS, headless=True)
        await _reopen(browser, base, 1, timeout_s, [])  # computed once: from now on it is cached
        alone: list = []
        await _reopen(browser, base, times, timeout_s, alone)
        busy: list = []
        load: list = []
        heavy = asyncio.gather(*(_session(browser, base, [HEAVY[i % len(HEAVY)]], 0, timeout_s, load)
                                 for i in range(others)))
        await asyncio.sleep(3.0)  # let the other sessions submit their jobs
        await _reopen(browser, base, times, timeout_s, busy)
        await heavy
        await browser.close()
    return {"alone": alone, "busy": busy, "load": load}


def cached_pass(others: int, times: int, timeout_s: float) -> None:
    store = tempfile.mkdtemp(prefix="replens-load-")
    proc, base = B.start_server(store_dir=store, timeout_s=120)
    try:
        time.sleep(2.0)
        r = asyncio.run(_cached_run(base, others, times, timeout_s))
    finally:
        B.stop_server(proc)
    a, b = statistics.median(r["alone"]), statistics.median(r["busy"])
    errors = [x for x in r["load"] if x["error"]]
    print(f"RepLens cached view ({CACHED}) reopened {times} times, one server on loopback")
    print(f"  alone:                       median {a:.2f} s, worst {max(r['alone']):.2f} s")
    print(f"  while {others} sessions compute: median {b:.2f} s, worst {max(r['busy']):.2f} s")
    print(f"  ratio busy / alone: median {b / a:.2f}x, worst {max(r['busy']) / max(r['alone']):.2f}x; "
          f"the {others} computing sessions: {len(r['load']) - len(errors)} completed, {len(errors)} errors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=8, help="concurrent browser sessions (default 8)")
    ap.add_argument("--rounds", type=int, default=2, help="analyses each session runs in turn (default 2)")
    ap.add_argument("--n", type=int, default=60, help="samples per analysis (default 60)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds before one analysis counts as failed")
    ap.add_argument("--no-baseline", action="store_true", help="skip the one-at-a-time pass")
    ap.add_argument("--cached", action="store_true",
                    help="measure a cached view's latency while the other sessions compute (issue #15)")
    ap.add_argument("--times", type=int, default=5, help="reopenings of the cached view (with --cached)")
    args = ap.parse_args()
    if args.cached:
        cached_pass(args.sessions - 1, args.times, args.timeout)
        return
    if not 1 <= args.sessions <= 64:
        ap.error("--sessions must lie between 1 and 64 (the benchmark is bounded on purpose)")

    runs = {"concurrent": one_pass(args.sessions, args.rounds, args.n, args.timeout, True)}
    if not args.no_baseline:
        runs["one at a time"] = one_pass(args.sessions, args.rounds, args.n, args.timeout, False)
    print(f"RepLens load: {args.sessions} sessions x {args.rounds} analyses, n = {args.n}, one server on loopback")
    for name, r in runs.items():
        print(f"  {name:>14}: {r['completed']}/{r['total']} analyses completed, {len(r['errors'])} errors, "
              f"latency median {r['median']:.1f} s, worst {r['worst']:.1f} s, wall {r['wall']:.1f} s, "
              f"server memory {r['idle_mb']:.0f} MB idle -> {r['peak_mb']:.0f} MB peak"
              f"{'' if r['server_alive'] else ', SERVER DIED'}")
        for e in r["errors"][:5]:
            print(f"      error on {e['path']}: {e['error']}")
    if "one at a time" in runs:
        c, s = runs["concurrent"], runs["one at a time"]
        print(f"  ratio concurrent / one at a time: wall {c['wall'] / s['wall']:.2f}x, "
              f"median latency {c['median'] / s['median']:.2f}x, peak memory {c['peak_mb'] / s['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
