"""The job runner (issue #15 jobs, issue #14 bounds): single flight, admission, ceilings, cancel,
owners that leave, a killed worker, estimates that learn. The pool tests start real worker processes."""
import os
import threading
import time

import pytest

from analysis import jobs
from analysis.errors import UserInputError
from analysis.jobs.limits import Limits


def _busy(seconds: float, key: str, cost=jobs.Cost(1.0, 0)) -> jobs.Task:
    return jobs.Task("analysis.jobs.probe:busy", {"seconds": seconds}, key.ljust(16, "0"), "busy work",
                     kind="test:busy", cost=cost)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def pool():
    ex = jobs.make_executor("pool")
    yield ex
    ex.shutdown()


def test_inline_job_finishes_inside_submit_and_records_progress():
    ex = jobs.make_executor("inline")
    job = ex.submit(_busy(0.2, "a1"))
    assert job.state == jobs.DONE and job.fraction == 1.0 and job.result["seconds"] >= 0.2


def test_only_functions_of_the_library_can_be_named():
    ex = jobs.make_executor("inline")
    job = ex.submit(jobs.Task("os:system", {"command": "true"}, "b" * 16))
    assert job.state == jobs.FAILED and "os" not in (job.error or "").split()


def test_a_task_over_the_time_ceiling_is_refused_with_the_way_around():
    limits = Limits(max_seconds=10, memory_bytes=10**9)
    from analysis.jobs.local import InlineExecutor

    ex = InlineExecutor(limits)
    task = jobs.Task("analysis.jobs.probe:busy", {"seconds": 0}, "c" * 16, "A big map",
                     cost=jobs.Cost(3600, 0), ways_around="Use fewer samples.")
    with pytest.raises(UserInputError, match="over this server's limit.*Use fewer samples"):
        ex.submit(task)
    with pytest.raises(UserInputError, match="memory"):
        ex.submit(jobs.Task("analysis.jobs.probe:busy", {"seconds": 0}, "d" * 16, cost=jobs.Cost(1, 10**10)))
    assert ex.active() == []


def test_memory_is_reserved_across_running_jobs():
    limits = Limits(max_seconds=100, memory_bytes=100)
    a, b = _busy(0, "e1", jobs.Cost(1, 70)), _busy(0, "e2", jobs.Cost(1, 70))
    assert limits.reserve(a, timeout=0.1)
    assert not limits.reserve(b, timeout=0.2)  # 140 > 100: waits
    threading.Timer(0.2, limits.release, args=(a,)).start()
    assert limits.reserve(b, timeout=5)  # admitted once a is done
    assert limits.in_use() == 70


def test_single_flight_two_sessions_one_computation(pool, monkeypatch):
    starts = []
    original = pool._start
    monkeypatch.setattr(pool, "_start", lambda job: (starts.append(job.key), original(job)))
    task = _busy(1.0, "f1")
    jobs_seen = []
    threads = [threading.Thread(target=lambda o=o: jobs_seen.append(pool.submit(task, owner=o))) for o in ("s1", "s2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert jobs_seen[0] is jobs_seen[1] and jobs_seen[0].owners == {"s1", "s2"}
    assert jobs_seen[0].wait(60) and jobs_seen[0].state == jobs.DONE
    assert starts == [task.key]


def test_cancel_kills_the_worker_process_and_the_pool_recovers(pool):
    job = pool.submit(_busy(60, "g1"), owner="s1")
    assert _wait(lambda: job.worker_pid is not None and job.state == jobs.RUNNING, 60)
    pid = job.worker_pid
    pool.cancel(job.key)
    assert job.state == jobs.CANCELLED
    assert _wait(lambda: not _alive(pid), 10), "the cancelled job's process is still running"
    again = pool.submit(_busy(0.2, "g2"))
    assert again.wait(60) and again.state == jobs.DONE


def test_a_job_whose_sessions_are_all_gone_is_cancelled(pool):
    job = pool.submit(_busy(60, "h1"), owner="tab-1")
    assert _wait(lambda: job.worker_pid is not None, 60)
    pid = job.worker_pid
    assert pool.reap(lambda sid: True) == []  # the tab is open
    assert pool.reap(lambda sid: False, grace_s=0.3) == []  # just closed: a reload gets a moment
    time.sleep(0.4)
    assert pool.reap(lambda sid: False, grace_s=0.3) == [job.key]
    assert job.state == jobs.CANCELLED and _wait(lambda: not _alive(pid), 10)


def test_an_owner_that_comes_back_keeps_the_job(pool):
    job = pool.submit(_busy(5, "i1"), owner="tab-1")
    pool.reap(lambda sid: False, grace_s=5)
    pool.submit(_busy(5, "i1"), owner="tab-2")  # the reloaded tab asks for the same result
    assert pool.reap(lambda sid: sid == "tab-2", grace_s=0) == []
    pool.cancel(job.key)


def test_a_job_past_the_time_ceiling_is_stopped():
    from analysis.jobs.local import PoolExecutor

    ex = PoolExecutor(workers=1, limits=Limits(max_seconds=3, memory_bytes=10**9))
    try:
        job = ex.submit(_busy(60, "j1", jobs.Cost(1, 0)))  # the estimate lied
        assert job.wait(90)
        assert job.state == jobs.FAILED and "limit per job" in job.error and job.user_error
    finally:
        ex.shutdown()


def test_a_killed_worker_is_reported_as_failed_with_a_retry(pool):
    import signal

    job = pool.submit(_busy(60, "k1"))
    assert _wait(lambda: job.worker_pid is not None, 60)
    os.kill(job.worker_pid, signal.SIGKILL)
    assert job.wait(30) and job.state == jobs.FAILED and "retry" in job.error.lower()
    pool.forget(job.key)
    again = pool.submit(_busy(0.1, "k1"))
    assert again is not job and again.wait(60) and again.state == jobs.DONE


@pytest.fixture()
def steady_machine(monkeypatch):
    """The speed probe pinned (its measurement is a timing), settable by the test."""
    from analysis.jobs import estimates

    speed = {"now": estimates.REFERENCE_SPEED}
    monkeypatch.setattr(estimates, "machine_speed", lambda: speed["now"])
    return speed


def test_estimates_learn_from_the_runs_on_this_machine(steady_machine):
    from analysis.jobs import estimates

    kind = "test:learn"
    assert estimates.correction(kind) == 1.0
    for actual in (2.0, 2.2, 1.8):
        estimates.record(kind, 1.0, actual)
    estimates.record(kind, 0.2, 0.01)  # estimated and measured short: start-up, not work: not recorded
    assert estimates.correction(kind) == pytest.approx(2.0)
    assert estimates.corrected(kind, 10) == pytest.approx(20.0)
    estimates.record(kind, 1.0, 1000.0)
    assert estimates.correction(kind) <= 8.0  # one odd run cannot make an estimate absurd


def test_estimates_learn_from_runs_estimated_long_that_came_back_fast(steady_machine):
    from analysis.jobs import estimates

    kind = "test:overestimated"
    for actual in (0.3, 0.25, 0.35):  # "about 4 s" that took a third of a second
        estimates.record(kind, 4.0, actual)
    assert estimates.correction(kind) == pytest.approx(0.125)  # 0.075, bounded below at 1/8
    assert estimates.corrected(kind, 4.0) == pytest.approx(0.5)


def test_a_lesson_learned_under_load_carries_over_to_a_quiet_machine(steady_machine):
    """Runs recorded while the machine ran at half its speed took twice the estimate; once it runs
    at full speed again, the same estimate needs no correction."""
    from analysis.jobs import estimates

    kind = "test:load"
    full = steady_machine["now"]
    steady_machine["now"] = full / 2
    for actual in (2.0, 2.1, 1.9):
        estimates.record(kind, 1.0, actual)
    assert estimates.correction(kind) == pytest.approx(2.0)
    steady_machine["now"] = full
    assert estimates.correction(kind) == pytest.approx(1.0)
    steady_machine["now"] = full / 4  # busier still than when it learned
    assert estimates.correction(kind) == pytest.approx(4.0)


def test_a_kind_that_never_ran_starts_from_what_every_kind_taught(steady_machine):
    from analysis.jobs import estimates

    assert estimates.correction("test:never-ran") == 1.0  # no history at all
    for kind, actual in (("test:x", 0.3), ("test:y", 0.25), ("test:z", 0.35)):
        estimates.record(kind, 1.0, actual)
    assert estimates.correction("test:never-ran") == pytest.approx(0.3)
    assert estimates.correction("test:x") == pytest.approx(0.3)


def test_the_speed_probe_is_positive_cached_and_pinned_by_the_environment(monkeypatch):
    from analysis.jobs import estimates

    assert float(os.environ["REPLENS_MACHINE_SPEED"]) == estimates.REFERENCE_SPEED  # conftest's pin
    monkeypatch.delenv("REPLENS_MACHINE_SPEED")
    assert estimates.machine_speed() > 0
    assert estimates.machine_speed() == estimates.machine_speed()  # cached between probes


def test_before_any_run_an_estimate_follows_the_probe(monkeypatch):
    """A machine (or a moment) half as fast as the one the constants were measured on doubles the
    estimate; twice as fast halves it; the factor stays within [1/8, 8]."""
    from analysis.jobs import estimates

    ref = estimates.REFERENCE_SPEED
    for speed, factor in ((ref, 1.0), (ref / 2, 2.0), (ref * 2, 0.5), (ref * 100, 1 / 8)):
        monkeypatch.setenv("REPLENS_MACHINE_SPEED", str(speed))
        assert estimates.corrected("test:fresh", 10.0) == pytest.approx(10.0 * factor)
