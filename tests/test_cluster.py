"""The Ray backend against a real local Ray cluster (tests/ray_cluster.py starts it once per
session): jobs with progress, cancel and the time limit, a sweep on Ray equal to the sweep in this
process, the Ray Data extraction equal to activations.extract, a worker killed mid-sweep (retried,
the shared PostgreSQL store whole, nothing duplicated), and the CLI's --ray."""
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import jobs, sweep
from analysis.__main__ import main
from analysis.activations import extract, is_cached
from analysis.jobs.limits import Limits
from analysis.spec import AnalysisSpec
from analysis.store import Store, default_store
from analysis.views.inputs import load_dataset, load_model
from tests.test_jobs import _alive, _wait

SEEDS = ["zoo:mlp-s0", "zoo:mlp-s1", "zoo:mlp-s2"]


@pytest.fixture(scope="module")
def ray_jobs(ray_cluster):
    from analysis.jobs.ray_backend import RayExecutor

    ex = RayExecutor(ray_cluster.address)
    yield ex
    ex.shutdown()


def _busy(seconds: float, key: str) -> jobs.Task:
    return jobs.Task("analysis.jobs.probe:busy", {"seconds": seconds}, key.ljust(16, "0"), "busy work",
                     kind="test:busy", cost=jobs.Cost(1.0, 10**6))


def test_a_ray_job_reports_progress_runs_once_and_returns(ray_jobs):
    task = _busy(2.0, "ray1")
    job = ray_jobs.submit(task)
    assert ray_jobs.submit(task) is job  # single flight: the same job, not a second task
    seen = []
    while not job.wait(0.05):
        seen.append(job.fraction)
    assert job.state == jobs.DONE and job.result["seconds"] >= 2.0, job.error
    assert any(0 < f < 1 for f in seen)  # progress reached this process while the task ran
    assert job.worker_pid and job.worker_pid != os.getpid() and ray_jobs.attempts(task.key) == 1


def test_cancel_kills_the_ray_worker(ray_jobs):
    job = ray_jobs.submit(_busy(120, "ray2"))
    assert _wait(lambda: job.worker_pid is not None, 120), job.message
    pid = job.worker_pid
    ray_jobs.cancel(job.key)
    assert job.state == jobs.CANCELLED
    assert _wait(lambda: not _alive(pid), 30)  # ray.cancel(force=True) ended the worker process


def test_a_users_mistake_comes_back_as_the_message(ray_jobs):
    bad = AnalysisSpec("similarity", {"a": "zoo:no-such-model", "n": 20})
    job = ray_jobs.submit(jobs.Task("analysis.views:run_task", {"spec": bad.to_json(), "sections": ["matrices"]},
                                    "ray3".ljust(16, "0"), "a bad model"))
    assert job.wait(180) and job.state == jobs.FAILED and job.user_error
    assert "no-such-model" in job.error and "Traceback" not in job.error


def test_a_job_past_the_time_limit_is_stopped(ray_cluster):
    from analysis.jobs.ray_backend import RayExecutor

    ex = RayExecutor(ray_cluster.address, limits=Limits(max_seconds=5, memory_bytes=10**9))
    try:
        slow = ex.submit(_busy(120, "ray4"))
        assert slow.wait(180) and slow.state == jobs.FAILED and "limit per job" in slow.error
        assert slow.elapsed() < 60
    finally:
        ex.shutdown()


def test_a_sweep_on_ray_equals_the_same_sweep_in_process(ray_jobs, tmp_path, monkeypatch):
    cells = sweep.similarity_cells(sweep.pairs(SEEDS, "all"), ["linear_cka", "rbf_cka"], n=100)
    monkeypatch.setenv("REPLENS_STORE", str(tmp_path / "here"))
    assert sweep.run(cells).computed == 6
    here = sweep.table(cells)
    monkeypatch.setenv("REPLENS_STORE", str(tmp_path / "ray"))  # the workers write where this process says
    done = sweep.run(cells, ray_jobs)
    assert (done.computed, done.cached) == (6, 0) and set(done.attempts.values()) == {1}
    pd.testing.assert_frame_equal(sweep.table(cells), here, check_exact=True)
    assert len(here) == 6 * 7 * 7


def test_the_ray_data_extraction_equals_activations_extract(ray_cluster, tmp_path):
    from analysis.jobs import ray_extract

    model, ds = load_model("zoo:cnn-s0"), load_dataset("digits", 100, 0, "test")
    on_ray = ray_extract.extract("zoo:cnn-s0", ("digits", 100, 0, "test"), None, "mean", batch_rows=32,
                                 store=default_store())
    here = extract(model, ds, None, "mean", store=Store(tmp_path / "elsewhere"))
    assert list(on_ray) == list(model.layers)
    for layer in model.layers:
        assert on_ray[layer].shape == here[layer].shape and on_ray.rules[layer] == here.rules[layer]
        np.testing.assert_allclose(on_ray[layer], here[layer], rtol=1e-6, atol=1e-6)
        assert is_cached(model, ds, layer, "mean")  # under the keys every view reads
    again = extract(model, ds, None, "mean")
    assert again.cached == set(model.layers)


def test_a_worker_killed_mid_sweep_is_retried_and_the_shared_store_stays_whole(ray_jobs, postgres_server, tmp_path,
                                                                                monkeypatch):
    shared = tmp_path / "shared"  # a lab's store: a PostgreSQL index plus a folder every node mounts
    monkeypatch.setenv("REPLENS_DATABASE_URL", postgres_server.new_database())
    monkeypatch.setenv("REPLENS_STORE", str(shared))
    cells = sweep.similarity_cells(sweep.pairs(SEEDS, "all"), ["rbf_cka", "linear_cka"], n=300)
    running = [ray_jobs.submit(cell.task()) for cell in cells]
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        victim = next((j for j in running if j.state == jobs.RUNNING and j.worker_pid), None)
        time.sleep(0.02)
    assert victim is not None, [j.message for j in running]
    os.kill(victim.worker_pid, signal.SIGKILL)
    assert all(j.wait(300) for j in running)
    assert all(j.state == jobs.DONE for j in running), [j.error for j in running]
    assert ray_jobs.attempts(victim.key) >= 2  # the killed task ran again on another worker

    store = default_store()
    keys = store.keys()
    assert len(keys) == len(set(keys))
    files = sorted(p.stem for p in (shared / "objects").rglob("*.npz"))
    assert files == sorted(keys)  # every row has its file and every file its row: nothing half-written or twice
    assert all(store.get(k) is not None for k in keys)  # each file whole and the result it claims to be
    ray_table = sweep.table(cells)
    monkeypatch.delenv("REPLENS_DATABASE_URL")
    monkeypatch.setenv("REPLENS_STORE", str(tmp_path / "here"))
    sweep.run(cells)
    pd.testing.assert_frame_equal(ray_table, sweep.table(cells), check_exact=True)


def test_the_cli_runs_a_sweep_and_a_view_on_ray(ray_cluster, tmp_path, capsys):
    grid = ["sweep", "--models", "zoo:mlp-s0", "zoo:mlp-s1", "--n", "80", "--quiet"]
    assert main(grid + ["--ray", ray_cluster.address, "--out", str(tmp_path / "ray")]) == 0
    printed = capsys.readouterr().out
    assert "1 cells: 1 computed" in printed and "(ray)" in printed
    assert main(grid + ["--store", str(tmp_path / "here"), "--out", str(tmp_path / "here-out")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ray" / "sweep.csv"),
                                  pd.read_csv(tmp_path / "here-out" / "sweep.csv"), check_exact=True)
    view = ["training-dynamics", "--n", "80", "--checkpoints", "zoo:mlp-ae-b8-ep5", "--layers", "encoder.bottleneck",
            "--quiet", "--store", str(tmp_path / "view-store")]
    assert main(view + ["--ray", ray_cluster.address, "--out", str(tmp_path / "view")]) == 0
    store = Store(tmp_path / "view-store")
    assert store.keys("training-dynamics-dynamics")  # computed on the cluster, into this store
    dynamics = pd.read_csv(tmp_path / "view" / "dynamics.csv", index_col=0)
    assert dynamics.loc["encoder.bottleneck", "epoch 150"] == pytest.approx(1.0)


def test_an_unreachable_cluster_is_one_message_naming_it(tmp_path):
    import subprocess
    import sys

    from tests.store_backends import free_port

    port = free_port()  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "analysis", "sweep", "--models", "zoo:mlp-s0", "--ray",
                          f"127.0.0.1:{port}", "--store", str(tmp_path / "s"), "--quiet"],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent,
                         env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert out.returncode == 2
    assert f"error: Could not reach the Ray cluster at 127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.usefixtures("apptest_navigation")
def test_a_page_shows_a_ray_jobs_progress_then_its_result(ray_jobs):
    from streamlit.testing.v1 import AppTest

    jobs.set_executor(ray_jobs)  # the app's executor, as with REPLENS_RAY set
    try:
        at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=300)
        at.run()
        at.switch_page("pages/similarity.py").run()
        at.number_input(key="n").set_value(140).run()
        seen, deadline = [], time.monotonic() + 240
        while len(at.get("plotly_chart")) < 3 and time.monotonic() < deadline:
            seen += [p.proto.text for p in at.get("progress")]
            time.sleep(0.5)
            at.run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert len(at.get("plotly_chart")) >= 3  # the maps, computed on a Ray worker
        assert any("layer-by-layer maps" in text for text in seen), seen  # its progress, drawn by the page
    finally:
        jobs.set_executor(None)
