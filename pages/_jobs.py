"""Running a view's sections from a page: read what the store holds, submit a job for the rest
(with its estimate, a Compute button when it is long, progress and Cancel), and never block the
page: the job runs in a worker process while the page shows what is ready and stays responsive.

A job belongs to the browser sessions that asked for it; a background reaper cancels it once they
have all closed. Identical requests from several sessions share one job (single flight).
"""
from __future__ import annotations

import threading
import time

import streamlit as st

from analysis import jobs
from analysis.errors import UserInputError
from pages._shell import show_error

AUTO_RUN_S = 4.0  # jobs estimated faster than this start at once; longer ones wait for a button
_REAPER: list = []
_REAPER_LOCK = threading.Lock()


def session_id() -> str | None:
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        return get_script_run_ctx().session_id
    except Exception:  # noqa: BLE001 - bare mode (no session): nothing owns the job
        return None


def _is_alive(sid: str) -> bool:
    try:
        from streamlit.runtime import Runtime

        return Runtime.instance().is_active_session(sid)
    except Exception:  # noqa: BLE001 - no runtime (tests): keep the job
        return True


def _start_reaper(executor) -> None:
    """Once per server process: cancel jobs whose browser sessions have all gone."""
    with _REAPER_LOCK:
        if _REAPER:
            return

        def loop():
            while True:
                time.sleep(1.0)
                try:
                    executor.reap(_is_alive)
                except Exception:  # noqa: BLE001 - the reaper must outlive any one bad job
                    pass

        thread = threading.Thread(target=loop, name="replens-job-reaper", daemon=True)
        thread.start()
        _REAPER.append(thread)


def executor():
    ex = jobs.get_executor("pool")
    if ex.name != "inline":
        _start_reaper(ex)
    return ex


def run_sections(view, spec, sections=None, *, label: str = "Compute", auto_s: float | None = None,
                 what: str | None = None, live=None):
    """The view's result for ``sections`` (None: all wanted ones) as far as it is ready, and whether
    it is complete. Draws, where the result is not complete: the estimate and a button (jobs longer
    than ``auto_s``, default AUTO_RUN_S), the progress with a Cancel button (running jobs), or the
    error with a Retry button. ``live``: a function that draws what the running job has produced so
    far (a training curve), called under its progress bar at every refresh."""
    auto_s = AUTO_RUN_S if auto_s is None else auto_s
    try:
        result, missing = view.peek(spec, sections)
    except UserInputError as exc:
        show_error(str(exc))
        return None, False
    if not missing:
        return result, True
    ex = executor()
    try:
        plan = view.plan(spec, missing)
    except UserInputError as exc:
        show_error(str(exc))
        return result, False
    task = plan.task
    job = ex.get(task.key)
    mine = st.session_state.setdefault("_jobs_cancelled_here", set())
    if job is not None and job.state in jobs.FINISHED:
        if job.state == jobs.FAILED or (job.state == jobs.CANCELLED and task.key in mine):
            _finished_badly(ex, job, task.key)
            return result, False
        ex.forget(task.key)  # done but its result is gone, or cancelled by a closed session: run again
        job = None
    if job is None:
        try:  # over the server's ceiling: say so (with the way around) before offering a button
            ex.limits.check(task)
        except UserInputError as exc:
            show_error(str(exc))
            return result, False
        approved = st.session_state.setdefault("_jobs_approved", set())
        if plan.cost.seconds > auto_s and task.key not in approved:
            st.info(f"Will compute {what or _describe(task)}: {plan.describe()}.")
            if not st.button(label, key=f"_run_{task.key[:16]}", type="primary"):
                return result, False
            approved.add(task.key)
        try:
            job = ex.submit(task, owner=session_id())
        except UserInputError as exc:
            show_error(str(exc))
            return result, False
    if job.state in jobs.FINISHED:  # the inline executor finished it inside submit
        if job.state != jobs.DONE:
            _finished_badly(ex, job, task.key)
            return result, False
        return view.peek(spec, sections)[0], True
    _watch(task.key, live)
    return result, False


def _describe(task) -> str:
    return task.title.split(": ", 1)[-1] if ": " in task.title else task.title


def _finished_badly(ex, job, key: str) -> None:
    if job.state == jobs.CANCELLED:
        st.warning(f"Cancelled: {_describe(job.task)}.")
    else:
        show_error(job.error or "The computation failed.")
    if st.button("Retry" if job.state == jobs.FAILED else "Run again", key=f"_retry_{key[:16]}"):
        st.session_state.get("_jobs_cancelled_here", set()).discard(key)
        st.session_state.setdefault("_jobs_approved", set()).add(key)
        ex.forget(key)
        st.rerun()


@st.fragment(run_every=0.5)
def _watch(key: str, live=None) -> None:
    """Progress of a running job, redrawn on its own every half second; the page reruns when the job
    ends (to draw its result)."""
    ex = executor()
    job = ex.get(key)
    if job is None or job.state in jobs.FINISHED:
        st.rerun(scope="app")
    estimate = job.task.cost.seconds
    eta = f" of about {jobs.fmt_seconds(estimate)}" if estimate >= 1 else ""
    head = f"{_describe(job.task)}: {job.message} · {jobs.fmt_seconds(job.elapsed())}{eta}"
    bar, cancel = st.columns([5, 2], vertical_alignment="bottom")  # room for "Cancel" in a half-width column
    bar.progress(job.fraction, text=head)
    if cancel.button("Cancel", key=f"_cancel_{key[:16]}", icon=":material/stop:"):
        st.session_state.setdefault("_jobs_cancelled_here", set()).add(key)
        ex.cancel(key)
        st.rerun(scope="app")
    if live is not None:
        live()
