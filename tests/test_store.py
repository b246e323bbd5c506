"""Result store, on both index backends (SQLite and a real PostgreSQL, see tests/store_backends.py):
round trip, content addressing, atomic writes, 8 concurrent writer processes, a killed writer,
hostile keys, uploads kept per use, documents; ``cached`` and its digest and codec; damaged result
files and a damaged index; fsspec roots."""
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import store as store_mod
from analysis.errors import UserInputError
from analysis.store import CodecError, Store, StoreUnavailableError, decode, default_store, digest, encode, make_key

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ results (both backends)
def test_round_trip_keeps_dtypes_shapes_and_meta(tmp_path, store_backend):
    s = store_backend.store(tmp_path)
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.array([1, 2, 3], dtype=np.int64),
              "file": np.zeros(2)}  # a name np.savez itself could not take
    key = make_key("test", a=1)
    s.put(key, arrays, {"note": "hello"})
    got = s.get(key)
    assert set(got) == {"x", "i", "file"}
    np.testing.assert_array_equal(got["x"], arrays["x"])
    assert got["x"].dtype == np.float32 and got["i"].dtype == np.int64
    assert s.meta(key) == {"note": "hello"}
    assert key in s and s.hits == 1 and s.misses == 0
    assert s.keys() == [key] and s.keys("result") == [key] and s.keys("other") == []
    s.delete(key)
    assert key not in s and s.get(key) is None and not list((tmp_path / "objects").rglob("*.npz"))


def test_survives_reopen(tmp_path, store_backend):
    key = make_key("test", b=2)
    store_backend.store(tmp_path).put(key, {"x": np.ones(5)})
    np.testing.assert_array_equal(store_backend.store(tmp_path).get(key)["x"], np.ones(5))


def test_miss_is_counted_and_none(tmp_path, store_backend):
    s = store_backend.store(tmp_path)
    assert s.get(make_key("nothing")) is None
    assert s.misses == 1


def test_keys_are_stable_and_parameter_sensitive():
    assert make_key("k", a=1, b=[1, 2]) == make_key("k", b=[1, 2], a=1)
    assert make_key("k", a=1) != make_key("k", a=2)
    assert make_key("k", a=1) != make_key("j", a=1)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "abc", "ZZZZZZZZZZ", "", "a" * 65])
def test_forged_keys_are_refused(tmp_path, bad, store_backend):
    with pytest.raises(UserInputError):
        store_backend.store(tmp_path).get(bad)


def test_object_arrays_and_the_record_name_are_refused(tmp_path):
    s = Store(tmp_path)
    with pytest.raises(TypeError):
        s.put(make_key("o"), {"x": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="reserved"):
        s.put(make_key("o"), {"__replens__": np.zeros(1)})


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, store_backend):
    s = store_backend.store(tmp_path)
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


def test_damaged_file_is_a_miss_and_forgotten(tmp_path, store_backend, caplog):
    s = store_backend.store(tmp_path)
    key = make_key("damaged")
    s.put(key, {"x": np.ones(10)})
    path = next((tmp_path / "objects").rglob("*.npz"))
    path.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, "analysis.store"):
        assert s.get(key) is None
    assert key not in s and not path.exists()
    assert key[:16] in caplog.text and "Dropped" in caplog.text


def test_a_file_of_another_result_or_shape_is_dropped(tmp_path, store_backend):
    """A result file copied over another's, or whose arrays disagree with its record, is not served."""
    s = store_backend.store(tmp_path)
    a, b = make_key("a"), make_key("b")
    s.put(a, {"x": np.ones((2, 3))})
    s.put(b, {"x": np.zeros((4, 5))})
    path = lambda k: tmp_path / "objects" / k[:2] / f"{k}.npz"
    shutil.copy(path(a), path(b))
    assert s.get(b) is None and b not in s
    np.testing.assert_array_equal(s.get(a)["x"], np.ones((2, 3)))
    # same key, but an array of another shape inside (the record says (2, 3))
    import zipfile

    with zipfile.ZipFile(path(a)) as z:
        members = {n: z.read(n) for n in z.namelist()}
    import io

    buf = io.BytesIO()
    np.save(buf, np.ones((3, 3)))
    members["x.npy"] = buf.getvalue()
    with zipfile.ZipFile(path(a), "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    assert s.get(a) is None and a not in s


def test_default_store_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLENS_STORE", str(tmp_path / "one"))
    a = default_store()
    monkeypatch.setenv("REPLENS_STORE", str(tmp_path / "two"))
    b = default_store()
    assert a.root != b.root and b.root == (tmp_path / "two").resolve()
    assert default_store() is b


# ------------------------------------------------------------------ concurrent and killed writers
def _writer(root, database_url, worker, n_keys):
    s = Store(root, database_url)
    for i in range(n_keys):
        shared = make_key("shared", i=i)  # every worker writes the same content here
        s.put(shared, {"x": np.full(2000, i, dtype=np.float64)}, {"i": i})
        own = make_key("own", w=worker, i=i)
        s.put(own, {"x": np.full(500, worker * 1000 + i, dtype=np.float64)})
        s.put_doc("spec", make_key("doc", i=i)[:16], {"i": i}, name=f"doc {i}")
    s.put_blob(b"the same upload from everyone", "u.npy", "data")
    s.close()


def test_eight_concurrent_writers_do_not_corrupt(tmp_path, store_backend):
    workers, n_keys = 8, 10
    url = store_backend.url_for(tmp_path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), url, w, n_keys)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    s = store_backend.store(tmp_path)
    for i in range(n_keys):
        np.testing.assert_array_equal(s.get(make_key("shared", i=i))["x"], np.full(2000, i))
        for w in range(workers):
            np.testing.assert_array_equal(s.get(make_key("own", w=w, i=i))["x"], np.full(500, w * 1000 + i))
        assert s.get_doc("spec", make_key("doc", i=i)[:16]) == {"i": i}
    assert len(s.keys()) == n_keys + workers * n_keys
    assert len(s.docs("spec")) == n_keys and len(s.blobs()) == 1
    assert list((tmp_path / "tmp").iterdir()) == []


KILL_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from analysis.store import Store, make_key
s = Store({store!r}, {url!r})
i = 0
while True:
    s.put(make_key("kill", i=i), {{"x": np.full(300_000, i, dtype=np.float64)}}, {{"i": i}})
    print(i, flush=True)
    i += 1
"""


def test_killed_writer_leaves_only_whole_results(tmp_path, store_backend):
    url = store_backend.url_for(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(root=str(ROOT), store=str(tmp_path), url=url)],
                            stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let it finish a few writes, then kill it mid-stream
        proc.stdout.readline()
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    s = store_backend.store(tmp_path)
    keys = s.keys("result")
    assert len(keys) >= 3
    for key in keys:
        i = s.meta(key)["i"]
        x = s.get(key)["x"]
        assert x.shape == (300_000,) and np.all(x == i)


# ------------------------------------------------------------------ uploads and documents
def test_blobs_are_content_addressed(tmp_path, store_backend):
    s = store_backend.store(tmp_path)
    sha1 = s.put_blob(b"hello", "a.npy", "data")
    sha2 = s.put_blob(b"hello", "../b.npy", "data")
    assert sha1 == sha2
    info = s.find_blob(sha1[:12])
    assert info["path"].read_bytes() == b"hello" and info["name"] == "b.npy"
    assert s.find_blob("../../etc") is None
    assert s.find_blob(sha1[:12], kind="model") is None
    with pytest.raises(UserInputError, match="Upload the file again"):
        s.read_blob("deadbeefdeadbeef")


def test_the_same_bytes_uploaded_for_two_uses_keep_both(tmp_path, store_backend):
    s = store_backend.store(tmp_path)
    sha = s.put_blob(b"\x93NUMPY same bytes", "emb.npy", "model")
    assert s.put_blob(b"\x93NUMPY same bytes", "rows.npy", "data", {"rows": 4}) == sha
    model, data = s.find_blob(sha[:16], "model"), s.find_blob(sha[:16], "data")
    assert (model["kind"], model["name"]) == ("model", "emb.npy")
    assert (data["kind"], data["name"], data["meta"]) == ("data", "rows.npy", {"rows": 4})
    assert s.find_blob(sha[:16])["kind"] == "model"  # without a use: the first one
    assert [b["kind"] for b in s.blobs()] == ["model", "data"]
    assert s.read_blob(sha[:16], "model")[0] == s.read_blob(sha[:16], "data")[0] == b"\x93NUMPY same bytes"


def test_an_embeddings_file_uploaded_as_model_and_as_data_keeps_both_links():
    """The failure once seen: the second upload re-labelled the file, and the first upload: link broke."""
    import io

    from analysis import data, models

    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32))
    model_ref = models.upload(buf.getvalue(), "emb.npy")
    data_ref = data.upload(buf.getvalue(), "emb.npy")
    assert model_ref == data_ref
    assert models.load(model_ref).layers and len(data.load(data_ref)) == 20
    assert models.load(model_ref).layers  # still a model after the data upload


def test_documents_keep_their_creation_date_and_search(tmp_path, store_backend):
    s = store_backend.store(tmp_path)
    sid = "0123456789abcdef"
    s.put_doc("report", sid, {"title": "First", "items": [1]}, name="First")
    created = s.docs("report")[0]["created"]
    s.put_doc("report", sid, {"title": "Second", "items": [1, 2]}, name="Second")
    (doc,) = s.docs("report")
    assert doc["created"] == created and doc["updated"] >= created and doc["name"] == "Second"
    assert s.get_doc("report", sid) == {"title": "Second", "items": [1, 2]}
    assert s.docs("report", "secON") and not s.docs("report", "first")
    assert s.get_doc("report", "../x") is None and s.get_doc("spec", sid) is None
    s.delete_doc("report", sid)
    assert s.get_doc("report", sid) is None and not (tmp_path / "docs" / "report" / f"{sid}.json").exists()


# ------------------------------------------------------------------ digest
def test_digest_is_canonical_and_keys_on_every_part(monkeypatch):
    base = digest("sim", {"a": "abc", "layers": ["l1", "l2"], "n": 3, "opts": {"x": 1.5, "y": None}})
    assert base == digest("sim", {"opts": {"y": None, "x": 1.5}, "n": 3, "layers": ("l1", "l2"), "a": "abc"})
    assert len(base) == 64 and int(base, 16) >= 0
    variants = [digest("other", {"a": "abc", "layers": ["l1", "l2"], "n": 3, "opts": {"x": 1.5, "y": None}}),
                digest("sim", {"a": "abd", "layers": ["l1", "l2"], "n": 3, "opts": {"x": 1.5, "y": None}}),
                digest("sim", {"a": "abc", "layers": ["l2", "l1"], "n": 3, "opts": {"x": 1.5, "y": None}}),
                digest("sim", {"a": "abc", "layers": ["l1", "l2"], "n": 3.0, "opts": {"x": 1.5, "y": None}}),
                digest("sim", {"a": "abc", "layers": ["l1", "l2"], "n": 3, "opts": {"x": 1.5}})]
    assert len({base, *variants}) == 6
    monkeypatch.setattr("analysis.store.keys.CODE_VERSION", 999)
    assert digest("sim", {"a": "abc", "layers": ["l1", "l2"], "n": 3, "opts": {"x": 1.5, "y": None}}) != base


def test_digest_hashes_arrays_by_bytes_dtype_and_shape():
    x = np.arange(6, dtype=np.float32)
    d = lambda a: digest("k", {"anchors": a})
    assert d(x) == d(x.copy()) == d(np.arange(6, dtype=np.float32))
    spread = np.zeros(12, np.float32)
    spread[::2] = x
    assert d(spread[::2]) == d(x)  # a non-contiguous view hashes by its content
    assert len({d(x), d(x.astype(np.float64)), d(x.reshape(2, 3)), d(x.view(np.int32)), d(x[:5])}) == 5
    assert d(np.float64(2.5)) == d(2.5) and d(np.int64(3)) == d(3)
    assert d(float("nan")) != d(float("inf")) != d(None)


@pytest.mark.parametrize("bad", [object(), {1: "int key"}, {"s": {1, 2}}, Path("/x"), np.array([None])])
def test_digest_refuses_what_it_cannot_key_by_content(bad):
    with pytest.raises(TypeError):
        digest("k", {"x": bad})


# ------------------------------------------------------------------ codec
@dataclasses.dataclass
class Inner:
    weights: np.ndarray
    label: str


@dataclasses.dataclass(frozen=True)
class Result:
    matrix: np.ndarray
    table: pd.DataFrame
    series: pd.Series
    names: list
    info: dict
    inner: Inner
    score: float
    count: int
    flag: bool
    nothing: None
    pair: tuple
    scalar: np.float32
    raw: bytes
    derived: int = dataclasses.field(init=False, default=7)


def sample_result() -> Result:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "float": [1.5, np.nan, -0.0], "int": np.array([1, 2, 3], np.int16), "bool": [True, False, True],
        "str": pd.array(["a", None, "ü\x00é"], dtype="str"), "string": pd.array(["x", pd.NA, ""], dtype="string"),
        "nullable": pd.array([1, None, 3], dtype="Int64"), "maybe": pd.array([True, None, False], dtype="boolean"),
        "cat": pd.Categorical(["u", "v", "u"], categories=["v", "u"], ordered=True),
        "when": pd.to_datetime(["2020-01-01", "2021-06-30", "2022-02-02"]),
    }, index=pd.Index(["r1", "r2", "r3"], name="row"))
    table["object"] = pd.Series(["p", None, float("nan")], dtype=object, index=table.index)
    table[7] = [7, 8, 9]  # a non-string column label next to string ones
    table.attrs = {"warnings": ["one <b>two</b>"], "cached": False, "nested": {"k": [1, 2.5]}}
    return Result(matrix=rng.normal(size=(4, 3)), table=table,
                  series=pd.Series([0.25, 0.5], index=pd.RangeIndex(10, 14, 2), name="s"),
                  names=["layer.0", "layer.1", ["deep", {"x": np.arange(3, dtype=np.uint8)}]],
                  info={"n": 2**70, "inf": float("inf"), 3: "int key", (1, "a"): None, "arr": np.eye(2, dtype=bool)},
                  inner=Inner(np.arange(4, dtype=np.complex64), "inner"), score=0.1 + 0.2, count=-3, flag=True,
                  nothing=None, pair=(1, "two", np.int8(3)), scalar=np.float32(1.25), raw=b"\x00\xffbytes")


def assert_same(a, b, where="value"):
    """Equal values of the same types, all the way down (NaN equal to NaN)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, check_index_type=True, check_column_type=True)
        assert_same(a.attrs, b.attrs, where + ".attrs")
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, check_exact=True, check_index_type=True)
    elif isinstance(a, pd.Index):
        pd.testing.assert_index_equal(a, b, exact=True, check_exact=True)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, where


def test_codec_round_trips_a_dataclass_of_arrays_tables_and_plain_values_exactly():
    value = sample_result()
    arrays, tree = encode(value)
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays.values())
    assert "matrix" in arrays and "inner.weights" in arrays  # arrays keep their place's name
    back = decode(arrays, json.loads(json.dumps(tree)))  # the tree survives JSON
    assert_same(value, back)
    assert back.derived == 7 and back.table.columns.tolist()[-1] == 7
    assert back.table["object"].dtype == object and back.table["object"].tolist()[1] is None  # None is not NaN


def _values():
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    arrays = hnp.arrays(st.sampled_from([np.float32, np.float64, np.int8, np.uint64, np.bool_, np.complex128, "<U3"]),
                        hnp.array_shapes(min_dims=0, max_dims=3, max_side=3))
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(max_size=8) | arrays
    keys = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
                        | st.dictionaries(keys, inner, max_size=3), max_leaves=12)


def test_codec_round_trips_any_nesting_of_plain_values_and_arrays():
    from hypothesis import given, settings

    @settings(max_examples=80, deadline=None)
    @given(_values())
    def round_trip(value):
        arrays, tree = encode(value)
        assert_same(value, decode(arrays, json.loads(json.dumps(tree))))

    round_trip()


def test_codec_keeps_a_flat_dict_of_arrays_under_its_names():
    arrays, tree = encode({"values": np.ones((2, 2)), "layer names": np.array(["a", "b"])})
    assert set(arrays) == {"values", "layer_names"}
    assert_same(decode(arrays, tree), {"values": np.ones((2, 2)), "layer names": np.array(["a", "b"])})


def test_codec_keeps_numpy_scalar_types_duplicate_columns_and_empty_tables():
    dup = pd.DataFrame([[1, 2.5], [3, 4.5]], columns=["a", "a"])
    empty = pd.DataFrame({"x": pd.Series([], dtype=np.float32), "s": pd.Series([], dtype="str")})
    value = [np.float64(0.1), np.str_("s"), np.bool_(True), np.datetime64("2024-01-02"), dup, empty,
             pd.DataFrame(index=pd.RangeIndex(3)), pd.Index([3, 1], dtype=np.int32, name="ix")]
    arrays, tree = encode(value)
    assert_same(value, decode(arrays, json.loads(json.dumps(tree))))


@pytest.mark.parametrize("bad", [object(), np.array([{"a": 1}], dtype=object), {"s": {1, 2}},
                                 pd.DataFrame({"o": pd.Series([[1], "a"], dtype=object)}),
                                 pd.DataFrame({"x": [1]}, index=pd.MultiIndex.from_tuples([(1, 2)])), {"k": [Path(".")]}])
def test_codec_refuses_what_it_cannot_store_without_pickle(bad):
    with pytest.raises(TypeError):
        encode(bad)


def test_codec_never_imports_a_module_named_by_a_stored_file():
    arrays, tree = encode(Inner(np.zeros(1), "x"))
    tree["type"] = "os:system"
    with pytest.raises(CodecError, match="not a dataclass"):
        decode(arrays, tree)
    tree["type"] = "some_module_not_imported:Thing"
    with pytest.raises(CodecError, match="not loaded"):
        decode(arrays, tree)
    assert "some_module_not_imported" not in sys.modules


# ------------------------------------------------------------------ cached
def test_cached_computes_once_and_returns_the_same_value(tmp_path, store_backend):
    s = store_backend.store(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return sample_result()

    parts = {"model": "ab" * 32, "layers": ["l1"], "anchors": np.arange(5)}
    first = s.cached("view", parts, compute, meta={"what": "a test"})
    second = s.cached("view", dict(parts), compute)
    assert len(calls) == 1 and s.hits == 1 and s.misses == 1
    assert_same(first, second)
    key = digest("view", parts)
    assert key in s and s.meta(key) == {"what": "a test"} and s.keys("view") == [key]
    s.cached("view", {**parts, "layers": ["l2"]}, compute)
    assert len(calls) == 2
    assert_same(store_backend.store(tmp_path).cached("view", parts, compute), first)  # another process's view
    assert len(calls) == 2


def test_module_level_cached_uses_the_default_store(store_backend):
    value = store_mod.cached("k", {"a": 1}, lambda: {"x": np.arange(3)})
    assert digest("k", {"a": 1}) in default_store()
    np.testing.assert_array_equal(store_mod.cached("k", {"a": 1}, lambda: 1 / 0)["x"], value["x"])


def _damage_truncate(s, path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_garbage(s, path):
    path.write_bytes(os.urandom(path.stat().st_size))


def _damage_other_result(s, path):
    s.put(make_key("other"), {"x": np.zeros((7, 7))})
    shutil.copy(next(p for p in path.parents[1].rglob("*.npz") if p != path), path)


def _damage_stale_class(s, path):
    """A value whose stored dataclass no longer has the fields the code defines (an older version)."""
    import io
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    record = json.loads(np.load(io.BytesIO(members["__replens__.npy"])).tobytes())
    record["value"]["fields"]["removed_field"] = 1
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(record).encode(), np.uint8))
    members["__replens__.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_garbage, _damage_other_result, _damage_stale_class])
def test_cached_recomputes_a_damaged_or_stale_result_with_a_message(tmp_path, store_backend, damage, caplog):
    s = store_backend.store(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return Inner(np.arange(6.0) * len(calls), "fresh")

    s.cached("inner", {"a": 1}, compute)
    key = digest("inner", {"a": 1})
    damage(s, tmp_path / "objects" / key[:2] / f"{key}.npz")
    with caplog.at_level(logging.WARNING, "analysis.store"):
        again = s.cached("inner", {"a": 1}, compute)
    assert len(calls) == 2 and again.label == "fresh"
    np.testing.assert_array_equal(again.weights, np.arange(6.0) * 2)  # the fresh value, not the damaged one
    assert "Dropped the stored result" in caplog.text and key[:16] in caplog.text
    assert_same(s.cached("inner", {"a": 1}, compute), again)  # and it is stored whole again
    assert len(calls) == 2


def test_cached_recomputes_a_value_that_fails_the_callers_check(tmp_path):
    s = Store(tmp_path)
    s.cached("m", {"n": 3}, lambda: {"m": np.zeros((2, 2))})  # written by a version with another shape
    got = s.cached("m", {"n": 3}, lambda: {"m": np.zeros((3, 3))}, check=lambda v: v["m"].shape == (3, 3))
    assert got["m"].shape == (3, 3)
    assert s.cached("m", {"n": 3}, lambda: 1 / 0, check=lambda v: v["m"].shape == (3, 3))["m"].shape == (3, 3)


# ------------------------------------------------------------------ a damaged or lost index (SQLite)
def _populated(root, s: Store | None = None) -> tuple[Store, dict]:
    s = s or Store(root)
    keys = {i: make_key("r", i=i) for i in range(5)}
    for i, key in keys.items():
        s.put(key, {"x": np.full((3, 2), i, np.float32)}, {"i": i}, kind="similarity" if i % 2 else "activations")
    sha = s.put_blob(b"uploaded bytes", "u.npy", "data", {"rows": 2})
    s.put_blob(b"uploaded bytes", "u.npy", "model")
    s.put_doc("spec", "0123456789abcdef", {"page": "similarity"}, name="a link")
    s.put_doc("report", "fedcba9876543210", {"title": "Lab meeting"}, name="Lab meeting")
    s.cached("view", {"a": 1}, lambda: Inner(np.ones(2), "cached"))
    return s, {"keys": keys, "sha": sha}


def _assert_everything_back(s: Store, known: dict) -> None:
    for i, key in known["keys"].items():
        np.testing.assert_array_equal(s.get(key)["x"], np.full((3, 2), i, np.float32))
        assert s.meta(key) == {"i": i}
    assert len(s.keys("similarity")) == 2 and len(s.keys("activations")) == 3
    assert s.find_blob(known["sha"][:16], "data")["meta"] == {"rows": 2}
    assert s.find_blob(known["sha"][:16], "model")["name"] == "u.npy"
    assert s.get_doc("spec", "0123456789abcdef") == {"page": "similarity"}
    assert [d["name"] for d in s.docs("report")] == ["Lab meeting"]
    assert s.cached("view", {"a": 1}, lambda: 1 / 0).label == "cached"


def _garbage(path):
    path.write_bytes(os.urandom(path.stat().st_size))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_garbage, _truncate, Path.unlink], ids=["garbage", "truncated", "deleted"])
def test_a_damaged_index_is_rebuilt_from_the_files(tmp_path, damage, caplog):
    s, known = _populated(tmp_path)
    _checkpoint(tmp_path)
    damage(tmp_path / "index.sqlite")
    with caplog.at_level(logging.WARNING, "analysis.store"):
        again = Store(tmp_path)
    _assert_everything_back(again, known)
    assert "Rebuilt the result store's index" in caplog.text and str(tmp_path) in caplog.text
    if damage is not Path.unlink:
        assert list(tmp_path.glob("index.sqlite.damaged-*"))  # kept for the administrator


def test_rebuild_on_request_keeps_everything(tmp_path, store_backend):
    s, known = _populated(tmp_path, store_backend.store(tmp_path))
    s.rebuild_index()
    _assert_everything_back(s, known)
    _assert_everything_back(store_backend.store(tmp_path), known)


def test_an_index_damaged_while_the_server_runs_is_rebuilt_at_the_next_request(tmp_path):
    s, known = _populated(tmp_path)
    _checkpoint(tmp_path)
    _garbage(tmp_path / "index.sqlite")
    _assert_everything_back(s, known)  # the same Store object, already open
    s.put(make_key("after"), {"x": np.ones(1)})
    assert make_key("after") in Store(tmp_path)


def _open_as_nobody(root: Path) -> str:
    """Open the store in a forked child that runs as ``nobody`` (root writes anywhere); its outcome."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                Store(root)
                outcome = "OPENED"
            except StoreUnavailableError as e:
                outcome = f"REFUSED {e}"
            except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test
                outcome = f"{type(e).__name__}: {e}"
            os.write(w, outcome.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        outcome = f.read()
    os.waitpid(pid, 0)
    return outcome


def test_an_index_that_cannot_be_rebuilt_stops_the_store_with_one_message_naming_the_folder():
    """A damaged index in a folder this account may read but not write: no rebuild is possible."""
    root = Path(tempfile.mkdtemp(prefix="replens-readonly-"))
    try:
        root.chmod(0o755)
        _populated(root)
        _checkpoint(root)
        _garbage(root / "index.sqlite")
        if os.geteuid() == 0:
            outcome = _open_as_nobody(root)
            assert outcome.startswith("REFUSED "), outcome
            text = outcome.removeprefix("REFUSED ")
        else:
            root.chmod(0o555)
            with pytest.raises(StoreUnavailableError) as info:
                Store(root)
            text = str(info.value)
        assert str(root) in text and "administrator" in text and "\n" not in text
    finally:
        root.chmod(0o755)
        shutil.rmtree(root)


def test_an_index_from_before_per_use_uploads_is_upgraded_and_keeps_everything(tmp_path):
    """The layout of earlier versions: blobs keyed by sha256 alone, no store id, no sidecar files."""
    sha = "ab" * 32
    (tmp_path / "blobs" / "ab").mkdir(parents=True)
    (tmp_path / "blobs" / "ab" / sha).write_bytes(b"old upload")
    with sqlite3.connect(tmp_path / "index.sqlite") as con:
        con.execute("CREATE TABLE results (key TEXT PRIMARY KEY, kind TEXT NOT NULL, path TEXT NOT NULL,"
                    " meta TEXT NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL)")
        con.execute("CREATE TABLE documents (kind TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,"
                    " body TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (kind, id))")
        con.execute("CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,"
                    " size INTEGER NOT NULL, meta TEXT NOT NULL, created REAL NOT NULL)")
        con.execute("INSERT INTO blobs VALUES (?, 'old.npy', 'data', 10, '{}', 1.0)", (sha,))
        con.execute("INSERT INTO documents VALUES ('spec', '0123456789abcdef', 'old link', '{\"page\": \"x\"}', 1.0, 1.0)")
    con.close()
    s = Store(tmp_path)
    s.put_blob(b"old upload", "old.npy", "model")
    assert {b["kind"] for b in s.blobs()} == {"data", "model"}
    (tmp_path / "index.sqlite").unlink()  # the adopted rows now survive a lost index
    again = Store(tmp_path)
    assert {b["kind"] for b in again.blobs()} == {"data", "model"}
    assert again.get_doc("spec", "0123456789abcdef") == {"page": "x"}


def _checkpoint(root):
    """Fold the WAL into index.sqlite, as the last connection closing does, so damage hits the data."""
    with sqlite3.connect(root / "index.sqlite") as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


# ------------------------------------------------------------------ PostgreSQL specifics
def test_postgres_index_is_built_from_an_existing_folder_and_shared_by_two_stores(tmp_path, postgres_server):
    """Moving a store from SQLite to PostgreSQL: point a new database at the folder; a second
    process (another app server) sees the same results, uploads and documents."""
    _, known = _populated(tmp_path)
    url = postgres_server.new_database()
    one, two = Store(tmp_path, url), Store(tmp_path, url)
    try:
        _assert_everything_back(one, known)
        one.put(make_key("new"), {"x": np.arange(4)})
        one.put_doc("report", "1111222233334444", {"title": "shared"}, name="shared")
        np.testing.assert_array_equal(two.get(make_key("new"))["x"], np.arange(4))
        assert two.get_doc("report", "1111222233334444") == {"title": "shared"}
    finally:
        one.close()
        two.close()


def test_a_database_of_another_store_is_refused(tmp_path, postgres_server):
    url = postgres_server.new_database()
    Store(tmp_path / "a", url).close()
    with pytest.raises(StoreUnavailableError, match="belongs to another result store"):
        Store(tmp_path / "b", url)


# ------------------------------------------------------------------ fsspec roots
@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_an_fsspec_root_keeps_results_uploads_documents_and_rebuilds(tmp_path, scheme, store_backend):
    name = f"replens-{uuid.uuid4().hex}"
    root = f"memory://{name}" if scheme == "memory" else f"file://{tmp_path}/fs"
    url = store_backend.url_for(root) or f"sqlite:///{tmp_path}/index.sqlite"
    s = Store(root, url)
    key = make_key("fs")
    s.put(key, {"x": np.arange(6).reshape(2, 3)}, {"m": 1})
    sha = s.put_blob(b"bytes", "f.npy", "data")
    s.put_doc("spec", "0123456789abcdef", {"page": "p"})
    value = s.cached("v", {"a": 1}, sample_result)
    np.testing.assert_array_equal(s.get(key)["x"], np.arange(6).reshape(2, 3))
    assert s.read_blob(sha[:16], "data")[0] == b"bytes" and str(s.find_blob(sha[:16])["path"]).startswith(root)
    assert s.files.walk("tmp") is not None and list(s.files.walk("tmp")) == []
    s.close()
    if store_backend.name == "sqlite":
        os.unlink(f"{tmp_path}/index.sqlite")  # a lost index comes back from the files
    again = Store(root, url)
    try:
        np.testing.assert_array_equal(again.get(key)["x"], np.arange(6).reshape(2, 3))
        assert again.get_doc("spec", "0123456789abcdef") == {"page": "p"}
        assert_same(again.cached("v", {"a": 1}, lambda: 1 / 0), value)
    finally:
        again.close()
        if scheme == "memory":
            import fsspec

            fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


def test_an_fsspec_root_needs_a_database_url():
    with pytest.raises(UserInputError, match="REPLENS_DATABASE_URL"):
        Store("memory://nowhere")
