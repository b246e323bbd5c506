"""Helpers for driving the RepLens app in a real browser (Playwright + Debian's Chromium).

No tests live here: tests/test_browser.py and benchmarks/app_start.py import these helpers.

- ``start_server`` / ``stop_server``: a ``streamlit run app.py`` subprocess with its own result store.
- ``launch_browser``: headless Chromium from /usr/bin/chromium (never ``playwright install``).
- ``wait_rendered``: wait until the app has finished running its script and nothing is spinning.
- ``pick_selectbox``: choose an option in a sidebar selectbox with real clicks.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
APP_DONE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def free_port() -> int:
    """A TCP port that was free a moment ago on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_text(proc: subprocess.Popen) -> str:
    path = getattr(proc, "log_path", None)
    if path and os.path.exists(path):
        with open(path, errors="replace") as f:
            return f.read()[-8000:]
    return ""


def start_server(port: int | None = None, store_dir: str | os.PathLike | None = None,
                 extra_args: tuple | list = (), timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start ``streamlit run app.py`` from the repository root; returns ``(proc, base_url)``.

    ``store_dir`` becomes ``$REPLENS_STORE`` (a fresh temporary folder if None). Waits until
    ``/_stcore/health`` answers ``ok``; raises RuntimeError with the server log if the server exits
    or does not answer within ``timeout_s``. The server's output goes to ``proc.log_path``.
    """
    port = port or free_port()
    if store_dir is None:
        store_dir = tempfile.mkdtemp(prefix="replens-store-")
    env = dict(os.environ, REPLENS_STORE=str(store_dir), PYTHONUNBUFFERED="1", REPLENS_JOBS="pool")
    log = tempfile.NamedTemporaryFile(prefix=f"streamlit-{port}-", suffix=".log", delete=False)
    # No --browser.gatherUsageStats: the shipped .streamlit/config.toml turns usage statistics off,
    # and tests/test_browser_shared_server.py checks that it does (no request leaves localhost).
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), *extra_args]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    proc.log_path = log.name  # type: ignore[attr-defined]
    base_url = f"http://localhost:{port}"
    args = list(extra_args)
    prefix = args[args.index("--server.baseUrlPath") + 1].strip("/") if "--server.baseUrlPath" in args else ""
    health = f"{base_url}/{prefix + '/' if prefix else ''}_stcore/health"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {proc.returncode} before it was healthy:\n"
                               f"{_log_text(proc)}")
        try:
            with urllib.request.urlopen(health, timeout=2) as r:
                if r.status == 200 and r.read().strip() == b"ok":
                    return proc, base_url
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"streamlit did not answer {health} within {timeout_s:.0f} s:\n"
                               f"{_log_text(proc)}")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop a server started by ``start_server`` (SIGTERM, then SIGKILL) and remove its log."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    path = getattr(proc, "log_path", None)
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def server_log(proc: subprocess.Popen) -> str:
    """The last part of the server's output (for failure messages)."""
    return _log_text(proc)


def launch_browser(playwright, headless: bool = True):
    """Headless Chromium from Debian's package, with the flags this sandbox needs."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=headless)


_BUSY_JS = """() => {
  const app = document.querySelector("[data-testid='stApp']");
  if (!app) return 'no app';
  const state = app.getAttribute('data-test-script-state');
  if (state !== 'notRunning') return 'state ' + state;
  if (document.querySelector("[data-testid='stStatusWidget'] [data-testid='stStatusWidgetRunningIcon'],"
      + "[data-testid='stStatusWidgetRunningManIcon'], [data-testid='stStatusWidgetStopButton']"))
    return 'status widget running';
  if (document.querySelector("[data-testid='stSpinner']")) return 'spinner';
  if (document.querySelector("[data-testid='stProgress']")) return 'job running';
  if (document.querySelector("[data-testid='stSkeleton'], [data-testid='stAppSkeleton']"))
    return 'skeleton';
  return '';
}"""


def wait_rendered(page, timeout_ms: float = 60_000, settle_ms: float = 500) -> float:
    """Wait until the app's script is done and nothing is running, steadily for ``settle_ms``.

    Streamlit flips ``data-test-script-state`` several times during a run (and a bound widget's
    URL update can trigger one more rerun), and lazily loaded elements (dataframes, Plotly charts)
    show ``stSkeleton`` placeholders for a while after the script is done. So one sighting of
    ``notRunning`` is not enough: the app must look idle (state notRunning, no running status
    widget, no spinner, no skeleton) for ``settle_ms`` in a row. Returns the ``time.monotonic()``
    at which that idle stretch began (when the page was done, for timings). Raises playwright's
    TimeoutError (naming what was still busy) after ``timeout_ms``.
    """
    from playwright.sync_api import TimeoutError as PwTimeout

    deadline = time.monotonic() + timeout_ms / 1000
    page.wait_for_selector(APP_DONE, state="attached", timeout=timeout_ms)
    idle_since = None
    reason = ""
    while True:
        reason = page.evaluate(_BUSY_JS)
        now = time.monotonic()
        if reason:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif (now - idle_since) * 1000 >= settle_ms:
            return idle_since
        if now > deadline:
            raise PwTimeout(f"app not idle after {timeout_ms / 1000:.0f} s ({reason or 'settling'})")
        page.wait_for_timeout(50)


def sidebar_selectbox(page, label: str):
    """The ``stSelectbox`` element in the sidebar whose label is exactly ``label``.

    While a rerun is in flight Streamlit keeps the previous run's copy of a widget under a
    ``[data-stale='true']`` wrapper next to the new one; that copy is left out.
    """
    exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
    return (page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']"
                         ":not([data-stale='true'] [data-testid='stSelectbox'])")
            .filter(has=page.get_by_test_id("stWidgetLabel").filter(has_text=exact)))


def selectbox_value(page, label: str) -> str:
    """The text currently shown by a sidebar selectbox (its combobox input's value)."""
    return sidebar_selectbox(page, label).get_by_role("combobox").input_value()


def pick_selectbox(page, label: str, option_text: str, timeout_ms: float = 15_000) -> float:
    """Open the sidebar selectbox labelled ``label`` and click the option whose text is ``option_text``.

    In Streamlit 1.67 a selectbox is a react-aria ComboBox: an ``input[role=combobox]`` plus an
    "Open" button; the options (``[role='option']``) live in a virtualized listbox
    (``stSelectboxVirtualDropdown``) rendered in a popover outside the sidebar. Only the options in
    view are in the DOM, so if the wanted one is not there we type its text to filter the list.
    Returns once the listbox has closed and the input shows the new value; the return value is
    the ``time.monotonic()`` just before the option was clicked (the user's "select" moment).
    """
    box = sidebar_selectbox(page, label)
    box.wait_for(state="visible", timeout=timeout_ms)
    exact = re.compile(rf"^\s*{re.escape(option_text)}\s*$")
    listbox = page.get_by_role("listbox", name=label)
    box.get_by_role("button", name="Open").click()
    listbox.wait_for(state="visible", timeout=timeout_ms)
    option = listbox.get_by_role("option").filter(has_text=exact)
    if option.count() == 0:
        box.get_by_role("combobox").fill(option_text)
    option.first.wait_for(state="visible", timeout=timeout_ms)
    clicked_at = time.monotonic()
    option.first.click()
    listbox.wait_for(state="hidden", timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    while selectbox_value(page, label) != option_text:
        if time.monotonic() > deadline:
            raise AssertionError(f"selectbox {label!r} shows {selectbox_value(page, label)!r}, "
                                 f"not {option_text!r}")
        page.wait_for_timeout(50)
    return clicked_at


# ------------------------------------------------------------------ what every browser test module shares
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")  # CI installs both: never skip there
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    expect = sync_playwright = None


def _marks() -> list:
    import pytest

    return [
        pytest.mark.browser,
        pytest.mark.skipif(sync_playwright is None and not IN_CI,
                           reason="playwright is not installed (pip install playwright; never `playwright install`)"),
        pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK) and not IN_CI,
                           reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"),
    ]


MARKS = _marks()  # pytestmark of every browser test module


# Rectangles of each chart's toolbar (Plotly's modebar) and of its titles, subtitles, legends and
# annotations that intersect it (DOM bounding boxes, not pixels): [overlaps, charts with a toolbar]
TOOLBAR_OVERLAPS_JS = """() => {
  const box = e => e.getBoundingClientRect();
  const hit = (a, b) => a.width > 0 && b.width > 0 && a.left < b.right && b.left < a.right
                        && a.top < b.bottom && b.top < a.bottom;
  const out = [];
  for (const chart of document.querySelectorAll("[data-testid='stPlotlyChart']")) {
    const bar = chart.querySelector('.modebar');
    if (!bar) continue;
    const title = (chart.querySelector('.gtitle') || {}).textContent || '(untitled)';
    for (const el of chart.querySelectorAll('.gtitle, .gtitle-subtitle, .annotation, .legend')) {
      if (hit(box(bar), box(el))) out.push(title + ' :: ' + el.getAttribute('class') + ' ' + el.textContent.slice(0, 50));
    }
  }
  return [out, document.querySelectorAll("[data-testid='stPlotlyChart'] .modebar").length];
}"""


def start_every_section(page, timeout_ms: float = 240_000, names=("Compute", "Train")) -> None:
    """Press the main area's start buttons (long sections wait for one; how long counts as long
    depends on the machine's load) until none is left: each press may reveal another."""
    import time

    main = page.get_by_test_id("stMain")
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        waiting = [b.first for b in (main.get_by_role("button", name=n, exact=True) for n in names) if b.count()]
        if not waiting:
            return
        waiting[0].click()
        wait_rendered(page, timeout_ms)
