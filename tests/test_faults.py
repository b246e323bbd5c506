"""Faults: a worker killed in the middle of a long computation, and work that would need more memory
than the machine has.

- Killed worker: the store stays readable, holds only whole results (no partial similarity matrix,
  no half-written activations), and the next request recomputes the same numbers.
- Memory: a computation that would not fit is refused before it starts (before the models run),
  with the estimate and the way around it, in the library and on the Similarity page.
- The store's PostgreSQL restarted mid-run: writes are retried and succeed, with a warning that
  names the database without its password; down for longer than the retry window: one clear
  message; unreachable at start-up: one clear message naming the URL without its password.
The killed worker runs on both store backends (SQLite and PostgreSQL: tests/store_backends.py).
The killed *server* (streamlit run, killed mid-computation, restarted) is in
tests/test_reliability_browser.py.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis import data, models, resources, similarity
from analysis.errors import UserInputError
from analysis.store import Store, StoreUnavailableError, make_key
from tests.store_backends import free_port, require_psycopg

ROOT = Path(__file__).resolve().parent.parent
N_LONG = 12_000  # digits_noisy rows: long enough to be killed half-way, short enough to recompute

WORKER = """
import sys
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from analysis import data, models, similarity
ds = data.load("digits_noisy", n={n}, seed=0)
a, b = models.load("zoo:mlp-s0"), models.load("zoo:cnn-s0")
similarity.layer_similarity(a, b, ds, "linear_cka",
                            progress=lambda f, msg: print(f"{{f:.3f}} {{msg}}", flush=True))
print("DONE", flush=True)
"""


def _run_until(proc, fraction: float, timeout_s: float = 120) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("DONE"):
            return 1.0
        value = float(line.split()[0])
        if value >= fraction:
            return value
    raise AssertionError("the worker did not reach the middle of its computation")


def test_worker_killed_mid_computation_leaves_a_whole_store_and_recomputes(tmp_path, monkeypatch, store_backend):
    store_dir = tmp_path / "store"
    env = dict(os.environ, OMP_NUM_THREADS="1", **store_backend.env(store_dir))
    proc = subprocess.Popen([sys.executable, "-c", WORKER.format(root=str(ROOT), n=N_LONG)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        reached = _run_until(proc, 0.4)  # model B's activations are being computed
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert reached < 1.0, "the worker finished before it could be killed: make N_LONG larger"

    store = store_backend.store(store_dir)
    assert store.keys("similarity") == []  # the partial result is absent
    for key in store.keys():  # every indexed result is whole and readable
        arrays = store.get(key)
        assert arrays is not None and arrays["x"].shape[0] == N_LONG
    indexed = {path for (path,) in store.index.run("SELECT path FROM results")}
    on_disk = {str(p.relative_to(store_dir)) for p in (store_dir / "objects").rglob("*.npz")}
    assert on_disk == indexed  # no orphan array file and no index row without its file

    # The next request recomputes (in this process, same store) and gets the numbers of a clean run.
    store_backend.activate(store_dir, monkeypatch)
    ds = data.load("digits_noisy", n=N_LONG, seed=0)
    a, b = models.load("zoo:mlp-s0"), models.load("zoo:cnn-s0")
    recomputed = similarity.layer_similarity(a, b, ds, "linear_cka")
    assert recomputed.attrs["cached"] is False
    clean = similarity.layer_similarity(a, b, ds, "linear_cka", store=Store(tmp_path / "clean"))
    np.testing.assert_array_equal(recomputed.to_numpy(), clean.to_numpy())
    assert len(store.keys("similarity")) == 1
    assert similarity.layer_similarity(a, b, ds, "linear_cka").attrs["cached"] is True


# ------------------------------------------------------------------ the store's PostgreSQL
PASSWORD = "s3cret-Pw"  # trust authentication ignores it; it must never reach a message


def test_postgres_restarted_mid_run_the_writes_are_retried_and_succeed(tmp_path, own_postgres, caplog):
    import threading

    url = own_postgres.url(own_postgres.new_database().rsplit("/", 1)[1], password=PASSWORD)
    store = Store(tmp_path, url)
    written, errors = [], []

    def write_loop():
        try:
            for i in range(60):
                store.put(make_key("loop", i=i), {"x": np.full(1000, i)}, {"i": i})
                written.append(i)
                time.sleep(0.02)
        except Exception as e:  # noqa: BLE001 - the test fails on it below
            errors.append(e)

    with caplog.at_level(logging.WARNING, "analysis.store"):
        store.put(make_key("before"), {"x": np.ones(3)})
        own_postgres.restart()  # between two writes
        store.put(make_key("after"), {"x": np.ones(3)})
        writer = threading.Thread(target=write_loop)
        writer.start()
        while len(written) < 10:
            time.sleep(0.01)
        own_postgres.restart()  # during a write loop
        writer.join(120)
    assert errors == [] and written == list(range(60))
    assert len(store.keys()) == 62
    for i in range(60):
        np.testing.assert_array_equal(store.get(make_key("loop", i=i))["x"], np.full(1000, i))
    lost = [r.getMessage() for r in caplog.records if "Lost the result store's database" in r.getMessage()]
    assert lost and all(f"127.0.0.1:{own_postgres.port}" in m for m in lost)
    assert PASSWORD not in caplog.text
    store.close()


def test_postgres_down_longer_than_the_retry_window_gives_one_clear_message(tmp_path, own_postgres, monkeypatch):
    monkeypatch.setenv("REPLENS_DB_RETRY_S", "1.5")
    url = own_postgres.url(own_postgres.new_database().rsplit("/", 1)[1], password=PASSWORD)
    store = Store(tmp_path, url)
    own_postgres.stop()
    with pytest.raises(StoreUnavailableError) as info:
        store.put(make_key("while down"), {"x": np.ones(3)})
    text = str(info.value)
    assert isinstance(info.value, UserInputError) and "\n" not in text
    assert f"postgresql://postgres@127.0.0.1:{own_postgres.port}/" in text and "Nothing was read or saved" in text
    assert PASSWORD not in text
    own_postgres.start()
    monkeypatch.setenv("REPLENS_DB_RETRY_S", "30")  # the pool may take a few seconds to reconnect
    store.put(make_key("while down"), {"x": np.ones(3)})  # the same store works again once it is back
    assert make_key("while down") in store
    store.close()


def test_postgres_unreachable_at_start_up_is_one_message_naming_the_url_without_its_password(tmp_path):
    require_psycopg()
    port = free_port()  # nothing listens there
    url = f"postgresql://replens:{PASSWORD}@127.0.0.1:{port}/labstore?sslmode=disable"
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        Store(tmp_path, url)
    text = str(info.value)
    assert isinstance(info.value, UserInputError) and "\n" not in text
    assert f"postgresql://replens@127.0.0.1:{port}/labstore" in text and "REPLENS_DATABASE_URL" in text
    assert PASSWORD not in text and "Traceback" not in text
    assert time.monotonic() - started < 30  # refused at once, not after the write retries


def test_a_database_url_of_another_kind_is_refused(tmp_path):
    with pytest.raises(UserInputError, match="must start with postgresql://"):
        Store(tmp_path, f"mysql://u:{PASSWORD}@host/db")
    try:
        Store(tmp_path, f"mysql://u:{PASSWORD}@host/db")
    except UserInputError as e:
        assert PASSWORD not in str(e)


# ------------------------------------------------------------------ memory
DIMS = [128, 128, 128, 128, 10, 10, 10]  # the zoo MLP's layers


def test_gram_matrices_for_100k_samples_are_refused_with_the_estimate_and_the_way_around():
    gib = 2**30
    with pytest.raises(UserInputError) as info:
        similarity.check_memory(100_000, DIMS, DIMS, "rsa", available=16 * gib)
    text = str(info.value)
    assert "100,000 samples" in text and "not started" in text
    assert "TB" in text or "GB" in text
    fit = int(text.split("about ")[-1].split(" fit")[0].replace(",", ""))
    assert 1000 < fit < 100_000
    assert similarity.estimate_bytes(fit, DIMS, DIMS, "rsa") <= resources.USABLE_FRACTION * 16 * gib
    assert similarity.estimate_bytes(fit + 1, DIMS, DIMS, "rsa") > resources.USABLE_FRACTION * 16 * gib
    with pytest.raises(UserInputError, match="minibatch estimator"):
        similarity.check_memory(100_000, DIMS, DIMS, "linear_cka", available=512 * 2**20)
    # the way around works: with a minibatch size the same run fits where the full one does not
    with pytest.raises(UserInputError):
        similarity.check_memory(100_000, DIMS, DIMS, "linear_cka", available=gib)
    similarity.check_memory(100_000, DIMS, DIMS, "linear_cka", batch_size=1024, available=gib)


@pytest.mark.parametrize("measure", ["rbf_cka", "rsa", "mutual_knn"])
def test_gram_estimates_grow_with_n_squared_and_minibatch_linearly(measure):
    est = lambda n, **k: similarity.estimate_bytes(n, DIMS, DIMS, measure, **k)
    assert est(40_000) / est(20_000) == pytest.approx(4, rel=0.05)
    lin = lambda n: similarity.estimate_bytes(n, DIMS, DIMS, "linear_cka", batch_size=512)
    assert lin(60_000) - lin(40_000) == pytest.approx(lin(40_000) - lin(20_000))


def test_library_refuses_before_the_models_run(monkeypatch, isolated_store):
    monkeypatch.setenv(resources.LIMIT_ENV, "256")
    from analysis import activations

    def fail(*a, **k):
        raise AssertionError("activations were extracted for a computation that cannot fit")

    monkeypatch.setattr(activations, "extract", fail)
    ds = data.load("digits_noisy", n=100_000)
    m = models.load("zoo:mlp-s0")
    with pytest.raises(UserInputError, match="RSA between 7 and 7 layers on 100,000 samples"):
        similarity.layer_similarity(m, m, ds, "rsa")
    assert Store(isolated_store).keys() == []


def test_similarity_matrix_refuses_too_large_arrays(monkeypatch):
    monkeypatch.setenv(resources.LIMIT_ENV, "64")
    x = np.zeros((6000, 2), np.float32)
    with pytest.raises(UserInputError, match="Mutual k-NN .* 6,000 samples would need about"):
        similarity.similarity_matrix({"x": x}, {"y": x}, "mutual_knn")


def test_memory_limit_variable_and_machine_figure(monkeypatch):
    monkeypatch.setenv(resources.LIMIT_ENV, "300")
    assert resources.available_bytes() == 300 * 2**20
    monkeypatch.delenv(resources.LIMIT_ENV)
    free = resources.available_bytes()
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < free <= total


@pytest.mark.usefixtures("apptest_navigation")
def test_similarity_page_refuses_with_the_estimate_and_offers_the_minibatch_way(monkeypatch):
    monkeypatch.setenv(resources.LIMIT_ENV, "1024")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/similarity.py")
    for k, v in {"data": "digits_noisy", "n": "20000", "measure": "rbf_cka"}.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "20,000 samples" in errors[0] and "not started" in errors[0], errors
    assert "fewer samples" in errors[0]
    assert not at.get("plotly_chart")  # nothing was computed
    # The way around: linear CKA with a minibatch size is not refused (it waits for the Compute button).
    at.selectbox(key="measure").set_value("linear_cka").run()
    at.number_input(key="batch").set_value(1024).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(b.label == "Compute" for b in at.button)


def test_neighbourhood_agreement_refuses_what_does_not_fit(monkeypatch):
    from analysis import projection

    monkeypatch.setenv(resources.LIMIT_ENV, "100")
    x = np.zeros((5000, 2), np.float32)
    with pytest.raises(UserInputError, match=r"Neighbourhood agreement on 5,000 samples .*about 1,869 fit"):
        projection.knn_agreement(x, x, k=5)
    small = np.random.default_rng(0).normal(size=(300, 3))
    np.testing.assert_array_equal(projection.knn_agreement(small, small, k=5), np.ones(300))
