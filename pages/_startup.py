"""What a server does once, at start, in the background: start the job workers, import the app's
libraries and modules, load the default data, and, once the first page is drawn, the default
models. app.py's lifespan calls :func:`start`; each session's script calls :func:`wait_for_imports`
before it imports the shell, and :func:`page_drawn` when its page is drawn.

Everything here is light (threading only): the script imports it before anything heavy.
"""
from __future__ import annotations

import threading
import time

QUIET_S = 3.0  # after a page is drawn, the browser still fetches its images and charts from this process
_IMPORTED = threading.Event()
_PAGE_DRAWN = threading.Event()
_LAST_DRAWN = [0.0]
_STARTED: list[threading.Thread] = []


def start() -> None:
    """Start the warm-up thread (once per process)."""
    if not _STARTED:
        thread = threading.Thread(target=_warm_up, name="replens-warm-up", daemon=True)
        _STARTED.append(thread)
        thread.start()


def wait_for_imports(timeout: float = 120) -> None:
    """A session's script waits here for the warm-up's imports (when a warm-up runs: not in AppTest).
    Libraries that import each other lazily (pandas <-> pyarrow, plotly -> narwhals -> pandas),
    imported for the first time by two threads at once, can hand one of them a half-initialised
    module ("partially initialized module 'pandas' has no attribute 'Series'"; found by
    benchmarks/load.py): one thread imports them, the sessions wait. Done in the background rather
    than before the server answers, so that the browser loads the page meanwhile."""
    if _STARTED:
        _IMPORTED.wait(timeout)


def page_drawn() -> None:
    _LAST_DRAWN[0] = time.monotonic()
    _PAGE_DRAWN.set()


def _after_first_page(timeout: float = 30) -> None:
    """Return once a page has been drawn and no other for QUIET_S (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    _PAGE_DRAWN.wait(timeout)
    while time.monotonic() < min(deadline, _LAST_DRAWN[0] + QUIET_S):
        time.sleep(0.2)


def _import_app_modules() -> None:
    import pandas  # noqa: F401
    import plotly.graph_objects  # noqa: F401
    import pyarrow  # noqa: F401

    import pages._jobs  # noqa: F401
    import pages._share  # noqa: F401
    import pages._shell  # noqa: F401
    from analysis import spec

    for page in spec.all_pages():  # the sidebar checks every page's parameters on a session's first run
        spec.params_of(page)


def _warm_up() -> None:
    """The job workers first (each imports torch and loads the default view's models in its own
    process: on an empty store the first page waits for them), then this process's imports and the
    default data. The default models (torch: seconds of a core, holding the interpreter lock that
    the server's event loop needs to send the page) wait until the first page is drawn: a page
    whose results are stored needs only the models' content hashes, not the models."""
    from analysis import jobs, views

    try:
        ex = jobs.get_executor("pool")
        for i in range(getattr(ex, "workers", 0)):
            ex.submit(jobs.Task("analysis.views:warm_up", {"hooks": "background"}, f"{i:064x}"[-64:], "warm-up"))
    except Exception:  # a warm-up must never take the server down; the page reports real errors
        ex = None
    try:
        _import_app_modules()
    finally:
        _IMPORTED.set()
    try:
        views.warm_up(models=False)
        _after_first_page()
        # the views' job-only imports (seconds) are the workers' business, unless jobs run here
        views.warm_up(hooks="now" if ex is None or ex.name == "inline" else "no")
    except Exception:  # noqa: BLE001
        pass
