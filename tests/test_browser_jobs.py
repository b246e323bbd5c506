"""Browser tests of jobs (issues #14 and #15): a long job in one session leaves another session's page
responsive, and closing the tab that started a job stops its worker process within seconds."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

pytestmark = B.MARKS
RENDER_MS = 180_000
LONG = "/similarity?measure=rsa&data=digits_noisy&n=3000"  # tens of seconds on one worker


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (the server's job workers), read from /proc."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(") ", 1)[1].split()
                if int(fields[1]) == pid and fields[0] != "Z":
                    out.add(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _busy_child(pid: int, seconds: float = 1.0) -> int | None:
    """The child that used the most CPU over ``seconds`` (the one running a job)."""
    def ticks(c):
        try:
            with open(f"/proc/{c}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            return 0
    before = {c: ticks(c) for c in _children(pid)}
    time.sleep(seconds)
    used = {c: ticks(c) - t for c, t in before.items()}
    best = max(used, key=used.get, default=None)
    return best if best is not None and used[best] > 0 else None


def _start_long_job(page, base: str) -> None:
    page.goto(base + LONG)
    page.wait_for_selector("[data-testid='stProgress'], button:has-text('Compute')", timeout=RENDER_MS)
    button = page.get_by_role("button", name="Compute")
    if button.count():  # a long estimate waits for the user
        button.first.click()
    page.get_by_test_id("stProgress").first.wait_for(state="visible", timeout=60_000)


def test_a_long_job_leaves_other_sessions_responsive_and_dies_with_its_tab(server, browser):
    base, proc = server
    first = browser.new_context(viewport={"width": 1400, "height": 1000})
    first.set_default_timeout(RENDER_MS)
    long_page = first.new_page()
    _start_long_job(long_page, base)

    second = browser.new_context(viewport={"width": 1400, "height": 1000})
    second.set_default_timeout(RENDER_MS)
    other = second.new_page()
    other.goto(f"{base}/similarity?n=100")
    B.wait_rendered(other, RENDER_MS)
    other.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3")
    assert long_page.get_by_test_id("stProgress").count() == 1, "the long job should still be running"
    second.close()

    worker = _busy_child(proc.pid)
    assert worker is not None, "no worker process is running the long job"
    first.close()  # the tab that started the job goes away
    deadline = time.monotonic() + 10
    while worker in _children(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker not in _children(proc.pid), "the job's worker process outlived its browser tab"
