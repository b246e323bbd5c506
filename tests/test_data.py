"""Data sources: digits split, text set, synthetic sets, reproducible subsampling, uploads."""
import io

import numpy as np
import pandas as pd
import pytest

from analysis import data
from analysis.errors import UserInputError
from conftest import PickleExploit


def test_digits_split_is_fixed_and_disjoint():
    split = data.digits_split()
    assert len(split["train"][1]) == 1200 and len(split["test"][1]) == 597
    tr = {r.tobytes() for r in split["train"][0]}
    te = [r.tobytes() for r in split["test"][0]]
    # sklearn digits contain a few exact duplicate images; the split itself is by row
    assert sum(r in tr for r in te) < 10
    assert split["test"][0].dtype == np.float32 and split["test"][0].max() <= 1.0
    np.testing.assert_array_equal(np.bincount(split["test"][1]) > 50, True)


def test_subsample_reproducible_and_seed_dependent():
    a = data.load("digits", n=100, seed=3)
    b = data.load("digits", n=100, seed=3)
    c = data.load("digits", n=100, seed=4)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.sha256 == b.sha256 and a.sha256 != c.sha256
    assert not np.array_equal(a.indices, c.indices)
    full = data.load("digits")
    np.testing.assert_array_equal(a.inputs, full.inputs[a.indices])
    np.testing.assert_array_equal(a.labels, full.labels[a.indices])


def test_n_larger_than_split_gives_all_rows():
    ds = data.load("digits", n=10_000)
    assert len(ds) == 597


def test_splits():
    assert data.load("digits", split="train").source_rows == 1200
    assert data.load("digits", split="all").source_rows == 1797
    with pytest.raises(UserInputError, match="split"):
        data.load("digits", split="validation")


def test_text_set_has_topics_and_renders():
    ds = data.load("text")
    assert len(ds) >= 300 and ds.kind == "text"
    assert len(ds.label_names) >= 6
    assert min(np.bincount(ds.labels)) >= 30
    assert len(set(ds.inputs)) == len(ds.inputs)
    r = ds.render(0)
    assert r["kind"] == "text" and r["text"] == ds.inputs[0] and r["label"] in ds.label_names


def test_digit_render_is_an_image():
    ds = data.load("digits", n=5)
    img = ds.render(2)["image"]
    assert img.shape == (8, 8)
    np.testing.assert_array_equal(img.ravel(), ds.inputs[2])


@pytest.mark.parametrize("name,dim,classes", [("swiss_roll", 3, 6), ("blobs", 16, 6)])
def test_synthetic_sets(name, dim, classes):
    ds = data.load(name, n=300, seed=1)
    assert ds.inputs.shape == (300, dim) and len(np.unique(ds.labels)) == classes


def test_unknown_dataset_message():
    with pytest.raises(UserInputError, match="Unknown dataset"):
        data.load("imagenet")
    with pytest.raises(UserInputError, match="at least 1"):
        data.load("digits", n=0)


# ------------------------------------------------------------------ uploads
def _npz(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_npz_upload_round_trip():
    x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    y = np.repeat(["cat", "dog"], 20)
    ref = data.upload(_npz(inputs=x, labels=y), "mine.npz")
    assert ref.startswith("upload:") and len(ref) == 23
    ds = data.load(ref)
    np.testing.assert_array_equal(ds.inputs, x)
    assert ds.label_names == ["cat", "dog"] and ds.labels.tolist() == [0] * 20 + [1] * 20
    sub = data.load(ref, n=10, seed=0)
    np.testing.assert_array_equal(sub.inputs, x[sub.indices])


def test_csv_upload_numeric_and_text():
    df = pd.DataFrame({"f1": np.arange(10.0), "f2": np.arange(10.0) ** 2, "label": list("ab") * 5})
    ds = data.load(data.upload(df.to_csv(index=False).encode(), "t.csv"))
    assert ds.inputs.shape == (10, 2) and ds.label_names == ["a", "b"]
    tf = pd.DataFrame({"text": [f"sentence {i}" for i in range(6)], "label": [0, 1] * 3})
    ds = data.load(data.upload(tf.to_csv(index=False).encode(), "s.csv"))
    assert ds.kind == "text" and ds.inputs[3] == "sentence 3"


def test_parquet_upload():
    df = pd.DataFrame({"a": np.arange(5.0), "b": np.ones(5)})
    buf = io.BytesIO()
    df.to_parquet(buf)
    ds = data.load(data.upload(buf.getvalue(), "p.parquet"))
    assert ds.inputs.shape == (5, 2) and ds.labels is None


def test_image_stack_upload():
    imgs = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, imgs)
    ds = data.load(data.upload(buf.getvalue(), "imgs.npy"))
    assert ds.kind == "image" and ds.image_shape == (8, 8) and ds.inputs.shape == (6, 64)


@pytest.mark.parametrize("payload,name,match", [
    (b"x,y\n1,2\n", "a.txt", "unsupported file type"),
    (b"\xff\xfe\x00garbage", "a.csv", "not UTF-8"),
    (b"a,b\n1,x\n2,y\n", "a.csv", "not numeric"),
    (b"a,b\n1,2\n", "a.csv", "at least 2"),
    (b"a,b\n1,2\n,4\n5,6\n", "a.csv", "NaN"),
    (b"not a zip", "a.npz", "not a valid .npz"),
    (b"", "a.npy", "empty"),
])
def test_bad_uploads_have_clear_messages(payload, name, match, isolated_store):
    with pytest.raises(UserInputError, match=match):
        data.upload(payload, name)
    assert not (isolated_store / "blobs").exists() or not any((isolated_store / "blobs").rglob("*"))


def test_mismatched_labels():
    with pytest.raises(UserInputError, match="one label per row"):
        data.upload(_npz(inputs=np.ones((5, 2)), labels=np.arange(4)), "m.npz")


def test_pickled_npy_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    np.save(buf, np.array([PickleExploit(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(UserInputError, match="never unpickles"):
        data.upload(buf.getvalue(), "evil.npy")
    assert not marker.exists()


def test_upload_size_limit(monkeypatch):
    monkeypatch.setenv("REPLENS_MAX_UPLOAD_MB", "0.001")
    with pytest.raises(UserInputError, match="upload limit"):
        data.upload(b"a\n" + b"1\n" * 2000, "big.csv")


def test_shipped_split_is_sklearns_split():
    import json

    from sklearn.datasets import load_digits

    assert json.loads(data.SPLIT_FILE.read_text()) == data.compute_digits_split()
    pixels, y = data.digits_raw()
    d = load_digits()
    np.testing.assert_array_equal(pixels, d.data)
    np.testing.assert_array_equal(y, d.target)


def test_the_caption_says_when_the_set_has_fewer_rows_than_asked():
    """Issue 20: the text set said '360 of 360 rows (all split)' while the sidebar asked for 500."""
    text = data.load("text", n=500)
    assert "all 360 rows (fewer than the 500 asked for)" in text.describe(500)
    assert "all 360 rows" in text.describe() and "fewer" not in text.describe(360)
    digits = data.load("digits", n=500)
    assert "500 of 597 rows of the test split (seed 0)" in digits.describe(500)
