"""Hostile uploads on every upload path: the library (``models.upload``, ``data.upload``) and the
page (the sidebar's upload panel, driven through AppTest's file uploader; one real browser upload
lives in tests/test_reliability_browser.py).

Each hostile file must give one clear message, run no code (the pickles would create a marker file),
leave nothing in the store (no blob, no result, no temporary file), and leave the app usable (a good
file uploaded right after is accepted). ``CATALOG`` lists every input tried with the message it gets.
"""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from analysis import data, models, tabular
from analysis.errors import UserInputError
from analysis.store import Store
from conftest import PickleExploit
from tests import hostile_scripts

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MB = 1  # $REPLENS_MAX_UPLOAD_MB for these tests: the over-size and zip-bomb files stay small


@pytest.fixture(autouse=True)
def small_limit(monkeypatch):
    monkeypatch.setenv(tabular.MAX_UPLOAD_ENV, str(LIMIT_MB))


# ------------------------------------------------------------------ payloads
def _npy(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _forged_npy_header(shape, payload=b"\0" * 64) -> bytes:
    from numpy.lib import format as npy_format

    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return buf.getvalue()


def _zip_bomb() -> bytes:
    """An honest .npz whose one member inflates to 8x the upload limit (compresses ~1000:1)."""
    zeros = np.zeros(8 * LIMIT_MB * 2**20 // 4, np.float32).reshape(-1, 16)
    return _zip({"inputs.npy": _npy(zeros)})


def _lying_npz() -> bytes:
    """An .npz whose member is small, but whose .npy header declares 10^11 floats (400 GB)."""
    return _zip({"inputs.npy": _forged_npy_header((10**11,))})


def _pickle_npz(marker) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, inputs=np.array([PickleExploit(marker)] * 3, dtype=object))
    return buf.getvalue()


def _torch_pickle(marker) -> bytes:
    buf = io.BytesIO()
    torch.save({"weights": PickleExploit(marker)}, buf)
    return buf.getvalue()


def _torchscript_with_evil_pickle(marker) -> bytes:
    """A real TorchScript archive whose data.pkl is replaced by a pickle that would create a file."""
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), buf)
    zin = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            blob = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                blob = pickle.dumps(PickleExploit(marker), protocol=2)
            zout.writestr(info, blob)
    return out.getvalue()


def _zoo_safetensors() -> bytes:
    from analysis import zoo

    return (zoo.ZOO_DIR / models.zoo_entry("mlp-s0")["file"]).read_bytes()


def _safetensors_header(header: bytes, body: bytes = b"\0" * 16, length: int | None = None) -> bytes:
    return (len(header) if length is None else length).to_bytes(8, "little") + header + body


def _nan_safetensors() -> bytes:
    from safetensors.torch import load, save

    state = load(_zoo_safetensors())
    first = sorted(state)[0]
    state[first] = state[first].clone()
    state[first].view(-1)[0] = float("nan")
    return save(state)


def _parquet(df) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf)
    return buf.getvalue()


def catalog(marker: Path) -> list[tuple[str, str, str, bytes, str]]:
    """(id, path, filename, bytes, expected message) for every hostile input; path is "model", "data"
    or "both" (the same file through both upload functions)."""
    lying_offsets = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}})
    return [
        # code execution attempts
        ("torch.save pickle", "model", "model.pt", _torch_pickle(marker), "not a TorchScript file"),
        ("raw pickle as .pth", "model", "model.pth", pickle.dumps(PickleExploit(marker)), "not a TorchScript file"),
        ("TorchScript archive with a hostile data.pkl", "model", "scripted.pt",
         _torchscript_with_evil_pickle(marker), "not a TorchScript file"),
        ("TorchScript that creates a file (aten::from_file, shared)", "model", "maps.pt",
         hostile_scripts.save(hostile_scripts.WriteFile(str(marker))), "uses the operator `aten::from_file`"),
        ("TorchScript that prints", "model", "prints.pt", hostile_scripts.save(hostile_scripts.Prints()),
         "uses the operator `prim::Print`"),
        ("pickled object array (.npy)", "both", "arr.npy",
         _npy(np.array([PickleExploit(marker)] * 3, dtype=object), allow_pickle=True), "never unpickles"),
        ("pickled member in .npz", "both", "arr.npz", _pickle_npz(marker), "never unpickles"),
        # files that are not what they claim
        ("random bytes as TorchScript", "model", "model.ts", bytes(range(256)) * 8, "not a TorchScript file"),
        ("zip that is not TorchScript", "model", "model.pt", _zip({"a.txt": b"hello"}), "not a TorchScript file"),
        ("truncated safetensors", "model", "w.safetensors", _zoo_safetensors()[:5000], "not a valid safetensors"),
        ("safetensors header length 2^62", "model", "w.safetensors",
         _safetensors_header(b"{}", length=2**62), "not a valid safetensors"),
        ("safetensors offsets past the end", "model", "w.safetensors",
         _safetensors_header(lying_offsets.encode()), "not a valid safetensors"),
        ("safetensors header not JSON", "model", "w.safetensors", _safetensors_header(b"\xff{not json"),
         "not a valid safetensors"),
        ("safetensors of a zoo model with NaN weights", "model", "nan.safetensors", _nan_safetensors(), "NaN/inf"),
        ("npy header declaring 400 GB", "both", "big.npy", _forged_npy_header((10**11,)), "truncated or forged"),
        ("npz member header declaring 400 GB", "both", "big.npz", _lying_npz(), "truncated or forged"),
        ("zip bomb (.npz, 8x the limit inflated)", "both", "bomb.npz", _zip_bomb(), "would inflate"),
        ("not a zip (.npz)", "both", "x.npz", b"PK\x03\x04 this is not a zip", "not a valid .npz"),
        ("random bytes (.parquet)", "both", "x.parquet", b"PAR1" + bytes(300), "could not be read as Parquet"),
        ("Parquet bomb (15 kB of run-length zeros, 2M rows)", "both", "bomb.parquet",
         _parquet(pd.DataFrame({"a": np.zeros(2_000_000, np.int64), "t": ["x"] * 2_000_000})), "would inflate"),
        # size and names
        ("over the size limit", "both", "huge.npy", _npy(np.ones((LIMIT_MB * 2**20 // 8 + 64,), np.float64)),
         "upload limit on this server is 1 MB"),
        ("empty file", "both", "empty.csv", b"", "is empty"),
        ("unknown extension (.onnx)", "both", "model.onnx", b"\x08\x01", "unsupported"),
        ("no extension", "both", "model", b"1,2\n3,4\n", "unsupported"),
        ("executable extension after a good one", "both", "data.csv.exe", b"MZ\x90\x00", "unsupported"),
        ("TorchScript name for data", "data", "model.pt", _npy(np.ones((4, 2))), "unsupported"),
        ("bytes that do not match the .npy name", "both", "evil.exe.npy", b"MZ\x90\x00" * 20, "not a valid .npy"),
        # tables
        ("non-UTF-8 CSV", "both", "latin1.csv", "caf\xe9,na\xefve\n1,2\n3,4\n".encode("latin-1"), "not UTF-8"),
        ("ragged CSV (extra field)", "both", "ragged.csv", b"a,b\n1,2\n3,4,5\n6,7\n", "could not be read as CSV"),
        ("ragged CSV (missing field)", "both", "short.csv", b"a,b,c\n1,2,3\n4,5\n6,7,8\n", "NaN/inf"),
        ("CSV with text in numeric columns", "both", "mixed.csv", b"a,b\n1,2\nx,4\n", "not numeric"),
        ("CSV with inf", "both", "inf.csv", b"a,b\n1,2\ninf,4\n5,6\n", "NaN/inf"),
        ("values beyond float32", "both", "huge.npy", _npy(np.array([[1.0, 1e300], [2, 3], [4, 5]])), "float32's range"),
        ("npy with NaN", "both", "nan.npy", _npy(np.array([[1.0, np.nan], [2, 3], [4, 5]])), "NaN/inf"),
        ("one row", "both", "one.csv", b"a,b\n1,2\n", "at least 2"),
        ("zero columns (npy)", "both", "zero.npy", _npy(np.ones((5, 0), np.float32)), "zero columns"),
        ("zero columns (CSV with only a label)", "data", "labels.csv", b"label\n1\n2\n3\n", "zero columns"),
        ("header only CSV", "both", "header.csv", b"a,b,c\n", "at least 2"),
        ("a single number (0-d npy)", "both", "scalar.npy", _npy(np.float32(3.0)), "single number"),
        ("complex numbers", "both", "complex.npy", _npy(np.ones((3, 2), np.complex64)), "not numeric"),
        ("labels not matching the rows", "data", "labels.npz", _npz(inputs=np.ones((5, 2)), labels=np.arange(4)),
         "one label per row"),
        ("labels with NaN", "data", "nanlab.npz", _npz(inputs=np.ones((3, 2)), labels=np.array([0, np.nan, 1])),
         "labels contain NaN"),
        ("layers with different row counts", "model", "ragged.npz", _npz(a=np.ones((10, 2)), b=np.ones((9, 2))),
         "different row counts"),
        ("parquet with a text column as embeddings", "model", "text.parquet",
         _parquet(pd.DataFrame({"d0": [1.0, 2.0], "name": ["x", "y"]})), "not numeric"),
    ]


def _cases(path: str):
    marker = Path("/nonexistent-marker")  # ids only; the tests build payloads with their own marker
    return [pytest.param(i, id=c[0]) for i, c in enumerate(catalog(marker)) if c[1] in (path, "both")]


def assert_store_clean(root: Path, results: bool = True) -> None:
    """Nothing half-written: no blob indexed, no file under blobs/ or tmp/ (and, where no analysis
    ran, no result under objects/)."""
    if not root.exists():
        return
    store = Store(root)
    assert store.blobs() == [] and (not results or store.keys() == [])
    subs = ("blobs", "tmp", "objects") if results else ("blobs", "tmp")
    leftovers = [p for sub in subs for p in (root / sub).rglob("*") if p.is_file()]
    assert leftovers == []


UPLOADERS = {"model": models.upload, "data": data.upload}


# ------------------------------------------------------------------ library
@pytest.mark.parametrize("path", ["model", "data"])
def test_every_hostile_file_is_refused_by_the_library(path, tmp_path, isolated_store):
    """One test per path runs the whole catalog (cheaper than a test per file: the payloads are
    built once); a failure names the input."""
    marker = tmp_path / "pwned"
    tried = 0
    for name, which, filename, blob, match in catalog(marker):
        if which not in (path, "both"):
            continue
        with pytest.raises(UserInputError, match=match) as info:
            UPLOADERS[path](blob, filename)
        assert str(info.value).count("\n") <= 2, f"{name}: message is not one short message: {info.value}"
        assert not marker.exists(), f"{name}: the hostile pickle ran"
        assert_store_clean(isolated_store)
        tried += 1
    assert tried >= 25


def test_catalog_size():
    """The report quotes this number: the distinct hostile inputs tried."""
    cases = catalog(Path("/nonexistent"))
    assert len({c[0] for c in cases}) == len(cases) >= 44


def test_path_like_upload_name_stays_in_the_store(isolated_store, tmp_path):
    """A file name with ../ is recorded by its base name only; the bytes land under blobs/<sha>."""
    good = _npy(np.arange(12, dtype=np.float32).reshape(6, 2))
    ref = data.upload(good, "../../../../tmp/escape.npy")
    info = Store(isolated_store).find_blob(ref.split(":")[1])
    assert info["name"] == "escape.npy"
    assert Path(info["path"]).resolve().is_relative_to(isolated_store.resolve())
    assert not (tmp_path.parent / "escape.npy").exists()
    np.testing.assert_array_equal(data.load(ref).inputs, np.arange(12, dtype=np.float32).reshape(6, 2))


def test_embeddings_whose_rows_do_not_match_the_dataset():
    ref = models.upload(_npy(np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)), "ten.npy")
    from analysis import activations

    with pytest.raises(UserInputError, match="rows"):
        activations.extract(models.load(ref), data.load("digits", n=50))


# ------------------------------------------------------------------ the page's upload panel
PANEL = """
import streamlit as st
from pages._shell import _upload_panel
_upload_panel()
st.markdown(f"selected: {st.session_state.get('_set_a') or st.session_state.get('_done_set_a') and 'a'} "
            f"{st.session_state.get('_set_data')}")
"""


def _panel() -> AppTest:
    at = AppTest.from_string(PANEL, default_timeout=60)
    at.run()
    assert not at.exception
    return at


@pytest.mark.parametrize("path,key", [("model", "upload_model"), ("data", "upload_data")])
def test_upload_panel_shows_one_message_per_hostile_file_and_stays_usable(path, key, tmp_path, isolated_store):
    marker = tmp_path / "pwned"
    at = _panel()
    uploader = at.sidebar.get("file_uploader")
    assert any(f"up to {LIMIT_MB} MB" in u.help for u in uploader), "the uploader must state the limit"
    for name, which, filename, blob, match in catalog(marker):
        if which not in (path, "both"):
            continue
        next(u for u in at.sidebar.get("file_uploader") if u.key == key).upload(filename, blob)
        at.run()
        assert not at.exception, f"{name}: {[e.value for e in at.exception]}"
        errors = [e.value.replace("\\", "") for e in at.error]  # as shown: markdown escapes removed
        assert len(errors) == 1 and match.lower() in errors[0].lower(), f"{name}: {errors}"
        assert not marker.exists()
        assert_store_clean(isolated_store)
    # still usable: a good file is accepted and selected
    good = _npy(np.random.default_rng(1).normal(size=(597, 4)).astype(np.float32))
    next(u for u in at.sidebar.get("file_uploader") if u.key == key).upload("good.npy", good)
    at.run()
    assert not at.exception and not at.error
    assert len(Store(isolated_store).blobs()) == 1


def test_upload_panel_says_why_code_uploads_are_off(monkeypatch, isolated_store):
    """On a shared server TorchScript is refused by default, and the message names the setting."""
    monkeypatch.setenv("REPLENS_SHARED_SERVER", "1")
    at = _panel()
    next(u for u in at.sidebar.get("file_uploader") if u.key == "upload_model").upload(
        "mlp.pt", hostile_scripts.save(hostile_scripts.mlp()))
    at.run()
    assert not at.exception
    errors = [e.value.replace("\\", "") for e in at.error]  # as shown: markdown escapes removed
    assert len(errors) == 1 and "does not run uploaded programs" in errors[0], errors
    assert "REPLENS_CODE_UPLOADS=on" in errors[0]
    assert_store_clean(isolated_store)


APP = str(ROOT / "app.py")


@pytest.mark.usefixtures("apptest_navigation")
def test_whole_app_hostile_upload_then_rows_that_do_not_match(tmp_path, isolated_store):
    """In the real app: a hostile file gives one message and the Models page still renders; an
    embeddings file whose rows do not match the dataset is stored, selected, and the page explains."""
    marker = tmp_path / "pwned"
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    at.sidebar.get("file_uploader")[0].upload("model.pt", _torch_pickle(marker))
    at.run()
    assert not at.exception and not marker.exists()
    assert [e.value for e in at.error if "not a TorchScript" in e.value]
    assert any(s.value == "Model A" for s in at.subheader)  # the page still rendered
    assert_store_clean(isolated_store, results=False)  # the page's own results are fine, no blob
    at.sidebar.get("file_uploader")[0].upload("ten.npy", _npy(np.ones((10, 3), np.float32) * np.arange(10)[:, None]))
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox(key="a").value.startswith("upload:")
    assert any("rows" in e.value for e in at.error), [e.value for e in at.error]
