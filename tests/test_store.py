"""Result store: round trip, content addressing, atomic writes, concurrent writers, hostile keys."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from analysis.errors import UserInputError
from analysis.store import Store, default_store, make_key


def test_round_trip_keeps_dtypes_shapes_and_meta(tmp_path):
    s = Store(tmp_path)
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.array([1, 2, 3], dtype=np.int64)}
    key = make_key("test", a=1)
    s.put(key, arrays, {"note": "hello"})
    got = s.get(key)
    assert set(got) == {"x", "i"}
    np.testing.assert_array_equal(got["x"], arrays["x"])
    assert got["x"].dtype == np.float32 and got["i"].dtype == np.int64
    assert s.meta(key) == {"note": "hello"}
    assert key in s and s.hits == 1 and s.misses == 0


def test_survives_reopen(tmp_path):
    key = make_key("test", b=2)
    Store(tmp_path).put(key, {"x": np.ones(5)})
    np.testing.assert_array_equal(Store(tmp_path).get(key)["x"], np.ones(5))


def test_miss_is_counted_and_none(tmp_path):
    s = Store(tmp_path)
    assert s.get(make_key("nothing")) is None
    assert s.misses == 1


def test_keys_are_stable_and_parameter_sensitive():
    assert make_key("k", a=1, b=[1, 2]) == make_key("k", b=[1, 2], a=1)
    assert make_key("k", a=1) != make_key("k", a=2)
    assert make_key("k", a=1) != make_key("j", a=1)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "abc", "ZZZZZZZZZZ", "", "a" * 65])
def test_forged_keys_are_refused(tmp_path, bad):
    with pytest.raises(UserInputError):
        Store(tmp_path).get(bad)


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError):
        Store(tmp_path).put(make_key("o"), {"x": np.array([{"a": 1}], dtype=object)})


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    s = Store(tmp_path)
    key = make_key("interrupted")

    def boom(*a, **k):
        raise KeyboardInterrupt("killed during rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        s.put(key, {"x": np.ones(1000)})
    monkeypatch.undo()
    assert s.get(key) is None
    assert key not in s
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not list((tmp_path / "objects").rglob("*.npz"))


def test_damaged_file_is_a_miss_and_forgotten(tmp_path):
    s = Store(tmp_path)
    key = make_key("damaged")
    s.put(key, {"x": np.ones(10)})
    path = next((tmp_path / "objects").rglob("*.npz"))
    path.write_bytes(b"garbage")
    assert s.get(key) is None
    assert key not in s


def test_blobs_are_content_addressed(tmp_path):
    s = Store(tmp_path)
    sha1 = s.put_blob(b"hello", "a.npy", "data")
    sha2 = s.put_blob(b"hello", "b.npy", "data")
    assert sha1 == sha2
    assert s.find_blob(sha1[:12])["path"].read_bytes() == b"hello"
    assert s.find_blob("../../etc") is None
    assert s.find_blob(sha1[:12], kind="model") is None
    with pytest.raises(UserInputError, match="Upload the file again"):
        s.read_blob("deadbeefdeadbeef")


def test_default_store_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLENS_STORE", str(tmp_path / "one"))
    a = default_store()
    monkeypatch.setenv("REPLENS_STORE", str(tmp_path / "two"))
    b = default_store()
    assert a.root != b.root and b.root == (tmp_path / "two").resolve()


def _writer(root, worker, n_keys):
    s = Store(root)
    for i in range(n_keys):
        shared = make_key("shared", i=i)  # every worker writes the same content here
        s.put(shared, {"x": np.full(2000, i, dtype=np.float64)}, {"i": i})
        own = make_key("own", w=worker, i=i)
        s.put(own, {"x": np.full(500, worker * 1000 + i, dtype=np.float64)})


def test_concurrent_writers_do_not_corrupt(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    s = Store(tmp_path)
    for i in range(15):
        np.testing.assert_array_equal(s.get(make_key("shared", i=i))["x"], np.full(2000, i))
        for w in range(4):
            np.testing.assert_array_equal(s.get(make_key("own", w=w, i=i))["x"], np.full(500, w * 1000 + i))
    assert len(s.keys()) == 15 + 60
    assert list((tmp_path / "tmp").iterdir()) == []


KILL_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from analysis.store import Store, make_key
s = Store({store!r})
i = 0
while True:
    s.put(make_key("kill", i=i), {{"x": np.full(300_000, i, dtype=np.float64)}}, {{"i": i}})
    print(i, flush=True)
    i += 1
"""


def test_killed_writer_leaves_only_whole_results(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(root=root, store=str(tmp_path))],
                            stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let it finish a few writes, then kill it mid-stream
        proc.stdout.readline()
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    s = Store(tmp_path)
    keys = s.keys("result")
    assert len(keys) >= 3
    for key in keys:
        i = s.meta(key)["i"]
        x = s.get(key)["x"]
        assert x.shape == (300_000,) and np.all(x == i)
