"""Property-based fuzzing (hypothesis) of the analysis functions with random and degenerate inputs.

Every function must return a result or raise :class:`UserInputError` with a message; never another
exception, and never a silent NaN/inf where a number is promised (NaN is allowed only where the
library documents it: a constant layer makes every similarity undefined).
Example counts are kept small so the whole file runs in well under a minute on two cores.
"""
from __future__ import annotations

import io
import math
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from analysis import data, projection, similarity, tabular
from analysis.errors import UserInputError
from analysis.store import Store, make_key

# CI replays the same examples every run (a failure there is reproducible, never flaky); a local run
# explores new ones each time (and hypothesis keeps the failing ones in .hypothesis/).
_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_COMMON = dict(deadline=None, derandomize=_CI, database=None if _CI else settings.default.database,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FUZZ = settings(max_examples=40, **_COMMON)
FEW = settings(max_examples=15, **_COMMON)

# Values a layer can take: ordinary, tiny, huge (float32 range), exact zeros; NaN/inf separately.
finite = st.one_of(st.floats(-1e3, 1e3, allow_nan=False, width=32),
                   st.sampled_from([0.0, 1.0, -1.0, 1e-30, 1e30, -3e38, 3e38]))


@st.composite
def layer_pairs(draw, max_n=12, max_p=6):
    """Two aligned (n x p), (n x q) float32 arrays; sometimes constant, one-column or one-row."""
    n = draw(st.integers(1, max_n))
    p, q = draw(st.integers(1, max_p)), draw(st.integers(1, max_p))
    x = draw(hnp.arrays(np.float32, (n, p), elements=finite))
    y = draw(hnp.arrays(np.float32, (n, q), elements=finite))
    kind = draw(st.sampled_from(["random", "const_x", "copy", "scaled", "zero_y"]))
    if kind == "const_x":
        x[:] = x[:1]
    elif kind == "copy" and p == q:
        y = x.copy()
    elif kind == "scaled":
        y = (x[:, :q] if q <= p else np.hstack([x] * q)[:, :q]) * np.float32(1e6)
    elif kind == "zero_y":
        y[:] = 0
    return x, y


def _call(fn, *args, **kwargs):
    """Run ``fn``; a UserInputError is an accepted outcome (returns None), anything else propagates."""
    try:
        return fn(*args, **kwargs)
    except UserInputError as exc:
        assert str(exc).strip(), "a UserInputError must carry a message"
        return None


def _constant(a) -> bool:
    a = np.asarray(a, dtype=np.float64)
    return bool((a == a[:1]).all())


# ---------------------------------------------------------------- similarity measures
@FUZZ
@given(layer_pairs(), st.sampled_from(list(similarity.MEASURES)))
def test_every_measure_returns_a_number_in_range_or_a_clear_error(pair, name):
    x, y = pair
    m = similarity.MEASURES[name]
    params = {"k": 2} if name == "mutual_knn" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            value = _call(similarity.compute, name, x, y, **params)
    if value is None:
        return
    assert isinstance(value, float)
    if _constant(x) or _constant(y):
        assert math.isnan(value), f"{name} on a constant layer should be NaN (undefined), got {value}"
        return
    assert math.isfinite(value), f"{name} returned {value} for x{x.shape} y{y.shape}"
    lo, hi = m.value_range
    assert lo - 1e-6 <= value <= hi + 1e-6, f"{name} = {value} outside {m.value_range}"


@FUZZ
@given(layer_pairs(max_n=10, max_p=4), st.sampled_from(["linear_cka", "debiased_linear_cka", "procrustes",
                                                         "svcca", "rsa"]))
def test_matrix_agrees_with_single_pairs(pair, name):
    """The stacked layer-by-layer path gives the same numbers as one pair at a time (or the same error)."""
    x, y = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            df = _call(similarity.similarity_matrix, {"x": x}, {"y": y, "x": x}, name)
            single = _call(similarity.compute, name, x, y)
    if df is None or single is None:
        return
    got = float(df.loc["x", "y"])
    if math.isnan(single):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(single, abs=1e-6), (name, got, single)


@FEW
@given(layer_pairs(max_n=40, max_p=5), st.sampled_from([4, 5, 8]))
def test_minibatch_cka_is_finite_or_clear(pair, batch):
    x, y = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = _call(similarity.similarity_matrix, {"x": x}, {"y": y}, "linear_cka", batch_size=batch)
    if df is None:
        return
    v = float(df.iloc[0, 0])
    if _constant(x) or _constant(y):
        assert math.isnan(v)
    else:  # finite, or NaN with a warning that says why (never a silent NaN)
        assert math.isfinite(v) or any("undefined" in w for w in df.attrs["warnings"]), (v, df.attrs)


@FEW
@given(st.integers(2, 6), st.integers(1, 4),
       st.sampled_from([np.nan, np.inf, -np.inf]), st.sampled_from(list(similarity.MEASURES)))
def test_nan_or_inf_in_a_layer_is_a_clear_error(n, p, bad, name):
    x = np.ones((n, p), np.float32) * np.arange(n)[:, None]
    x[n // 2, p - 1] = bad
    with pytest.raises(UserInputError, match="NaN/inf"):
        similarity.compute(name, x, np.arange(n * 2, dtype=np.float32).reshape(n, 2))


@FEW
@given(st.integers(1, 8), st.integers(1, 8))
def test_rows_that_do_not_align_are_a_clear_error(n, m):
    assume(n != m)
    with pytest.raises(UserInputError):
        similarity.compute("linear_cka", np.random.rand(n, 3), np.random.rand(m, 3))


@FEW
@given(layer_pairs(max_n=12, max_p=4), st.integers(-3, 20))
def test_mutual_knn_any_k(pair, k):
    x, y = pair
    value = _call(similarity.mutual_knn, x, y, k=k)
    if value is not None and not (_constant(x) or _constant(y)):
        assert 0 <= value <= 1


@FEW
@given(st.integers(0, 60), st.integers(0, 70), st.integers(0, 4))
def test_batch_slices_cover_every_row_once(n, batch, _):
    slices = _call(similarity.batch_slices, n, batch)
    if slices is None:
        return
    covered = np.concatenate([np.arange(n)[s] for s in slices])
    np.testing.assert_array_equal(covered, np.arange(n))
    assert all(s.stop - s.start >= 4 for s in slices)


@FEW
@given(st.integers(1, 12), st.sampled_from(["linear_cka", "procrustes", "rsa"]), st.integers(0, 3))
def test_per_class_similarity_any_labels(n, name, n_classes):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    labels = rng.integers(0, max(n_classes, 1), size=n)
    table = _call(similarity.per_class_similarity, x, y, labels, name, min_samples=2)
    if table is not None:
        assert len(table) <= len(np.unique(labels))


# ---------------------------------------------------------------- projection
@FUZZ
@given(st.integers(1, 10), st.integers(1, 5), st.sampled_from(["random", "const", "zeros", "huge", "one_col"]),
       st.sampled_from([2, 3]))
def test_pca_is_finite_or_clear(n, p, kind, k):
    rng = np.random.default_rng(n * 10 + p)
    x = rng.normal(size=(n, p))
    if kind == "const":
        x[:] = 7.0
    elif kind == "zeros":
        x[:] = 0
    elif kind == "huge":
        x *= 1e30
    elif kind == "one_col":
        x = x[:, :1]
    out = _call(projection.pca, x, k)
    if out is None:
        return
    coords, ratio = out
    assert coords.shape == (n, k)
    assert np.isfinite(coords).all() and np.isfinite(ratio).all()
    assert 0 <= ratio.sum() <= 1 + 1e-9


@FEW
@given(st.integers(1, 12), st.sampled_from(["pca", "tsne"]), st.sampled_from([2, 3]),
       st.sampled_from(["random", "const"]), st.floats(0.5, 40))
def test_project_is_finite_or_clear(n, method, k, kind, perplexity):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    if kind == "const":
        x[:] = 1.0
    params = {"perplexity": perplexity} if method == "tsne" else {}
    p = _call(projection.project, x, method, k, 0, use_cache=False, **params)
    if p is not None:
        assert p.coords.shape == (n, k) and np.isfinite(p.coords).all()


@FEW
@given(st.integers(1, 10), st.sampled_from([2, 3]), st.sampled_from(["random", "zeros", "const_b"]))
def test_align_is_finite_or_clear(n, k, kind):
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    if kind == "zeros":
        a[:] = 0
    elif kind == "const_b":
        b[:] = 3.0
    out = _call(projection.align, a, b)
    if out is not None:
        assert np.isfinite(out.aligned).all()


@FEW
@given(st.integers(1, 10), st.integers(-2, 12))
def test_knn_agreement_any_k(n, k):
    rng = np.random.default_rng(n)
    out = _call(projection.knn_agreement, rng.normal(size=(n, 3)), rng.normal(size=(n, 2)), k)
    if out is not None:
        assert out.shape == (n,) and np.isfinite(out).all() and (0 <= out).all() and (out <= 1).all()


# ---------------------------------------------------------------- tabular parsing and uploads
@FUZZ
@given(st.binary(max_size=400), st.sampled_from([".npy", ".npz", ".csv", ".parquet", ".txt", ""]))
def test_random_bytes_never_crash_the_parsers(blob, suffix):
    name = "f" + suffix
    _call(data.parse_upload, blob, name)
    from analysis.models.embeddings import parse_embeddings

    _call(parse_embeddings, blob, name)


@FUZZ
@given(st.lists(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5),
                                   st.text(max_size=3)), min_size=0, max_size=4), min_size=0, max_size=6),
       st.booleans())
def test_random_csv_tables(rows, header):
    """Ragged, mixed-type, empty and NaN CSV tables: parsed to a finite matrix or a clear error."""
    lines = ([",".join(f"c{i}" for i in range(4))] if header else []) + [",".join(map(str, r)) for r in rows]
    blob = "\n".join(lines).encode()
    out = _call(data.parse_upload, blob, "t.csv")
    if out is not None:
        kind, inputs, codes, _ = out
        if kind == "vector":
            assert np.isfinite(inputs).all() and inputs.shape[0] >= 2 and inputs.shape[1] >= 1


@FEW
@given(hnp.arrays(st.sampled_from([np.float32, np.float64, np.int8, np.uint16, np.bool_, np.complex64]),
                  hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
@example(np.float32(0.0))  # regression: a 0-d array raised IndexError
@example(np.zeros((0, 0, 0), np.float32))  # regression: reshape(0, -1) raised ValueError
def test_random_npy_arrays(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    out = _call(data.parse_upload, buf.getvalue(), "a.npy")
    if out is not None:
        kind, inputs, _, _ = out
        mat = inputs[0] if kind == "image" else inputs
        assert np.isfinite(mat).all() and mat.shape[0] >= 2 and mat.ndim == 2


@FEW
@given(st.integers(0, 3), st.integers(0, 4), st.sampled_from(["inputs", "X", "other"]), st.booleans())
def test_random_npz_members(n, d, in_name, with_labels):
    arrays = {in_name: np.random.rand(n, d)}
    if with_labels:
        arrays["labels"] = np.arange(max(n - 1, 0))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _call(data.parse_upload, buf.getvalue(), "z.npz")


@pytest.mark.parametrize("arr", [np.float32(3.0), np.zeros((0, 0, 2)), np.zeros((3, 0, 4))])
def test_numeric_matrix_degenerate_shapes_are_clear_errors(arr):
    with pytest.raises(UserInputError):
        tabular.numeric_matrix(arr, "scalar.npy")
    with pytest.raises(UserInputError):
        from analysis.validation import as_matrix

        as_matrix(arr)


# ---------------------------------------------------------------- data loading parameters
@FUZZ
@given(st.sampled_from(list(data.names()) + ["upload:zz", "../etc", ""]),
       st.one_of(st.none(), st.integers(-5, 3000)), st.integers(-3, 2**33),
       st.sampled_from(["test", "train", "all", "bogus"]))
def test_data_load_parameters(name, n, seed, split):
    assume(name != "digits_noisy" or (n is not None and n < 2000))
    ds = _call(data.load, name, n=n, seed=seed, split=split)
    if ds is not None:
        assert len(ds) >= 1 and len(ds.indices) == len(ds)
        if n is not None and n >= 1:
            assert len(ds) <= n


# ---------------------------------------------------------------- store keys
@FUZZ
@given(key=st.one_of(st.text(max_size=70), st.binary(max_size=10), st.integers(), st.none()))
def test_forged_store_keys(key, tmp_path):
    s = Store(tmp_path / "s")
    try:
        got = s.get(key)
    except UserInputError:
        return
    assert got is None  # a well-formed key that was never written


@FEW
@given(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.floats(allow_nan=True), st.text(),
                                                       st.none(), st.lists(st.integers(), max_size=3)),
                       max_size=4))
def test_make_key_is_a_valid_stable_key(parts):
    k1 = make_key("fuzz", **{f"p_{k}": v for k, v in parts.items()})
    k2 = make_key("fuzz", **{f"p_{k}": v for k, v in parts.items()})
    assert k1 == k2 and len(k1) == 64 and all(c in "0123456789abcdef" for c in k1)


# ---------------------------------------------------------------- regressions found by the fuzzer
def test_rbf_cka_on_two_samples_is_defined():
    """The median squared distance of two points (diagonal zeros included) is 0: sigma must come from
    the non-zero distances, not give a constant kernel (NaN) for data that is not constant."""
    x = np.array([[0.0], [1.0]])
    assert similarity.rbf_cka(x, x) == pytest.approx(1.0)
    x3 = np.array([[0.0], [0.0], [0.0], [1.0]])  # most pairs coincide
    assert similarity.rbf_cka(x3, 2 * x3) == pytest.approx(1.0)


def test_rsa_undefined_cases_are_clear_errors():
    with pytest.raises(UserInputError, match="at least 3 samples"):
        similarity.rsa(np.array([[0.0, 1], [1, 0]]), np.array([[0.0, 1], [1, 0]]))
    one_feature = np.arange(5.0)[:, None]  # every sample has all (one) features equal
    with pytest.raises(UserInputError, match="euclidean"):
        similarity.rsa(one_feature, np.random.default_rng(0).normal(size=(5, 3)))
    assert similarity.rsa(one_feature, one_feature, rdm="euclidean") == pytest.approx(1.0)


def test_rsa_matrix_says_why_a_layer_is_nan():
    x = np.arange(6.0)[:, None]
    y = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.warns(similarity.SimilarityWarning, match="undefined"):
        df = similarity.similarity_matrix({"x": x}, {"y": y}, "rsa")
    assert np.isnan(df.loc["x", "y"]) and any("A:x" in w for w in df.attrs["warnings"])


@pytest.mark.parametrize("y", [np.array([[203.6875], [0], [0], [0]]),  # exact self-HSIC_1 is 0
                               np.array([[0.0], [1], [1], [1]])])
def test_debiased_cka_without_a_value_is_a_clear_error(y):
    x = np.array([[0.0], [0], [1], [1]])
    with pytest.raises(UserInputError, match="Debiased CKA is undefined"):
        similarity.debiased_linear_cka(x, y)
    with pytest.warns(similarity.SimilarityWarning, match="undefined"):
        df = similarity.similarity_matrix({"x": x}, {"y": y}, "debiased_linear_cka")
    assert np.isnan(df.iloc[0, 0])


TSNE_CRASH = """
import sys, warnings
import numpy as np
sys.path.insert(0, {root!r})
warnings.simplefilter("ignore")
from analysis import projection
from analysis.errors import UserInputError
x = np.random.default_rng(0).normal(size=(12, 4)) * {scale}
if {constant}:
    x[:] = 1.0
try:
    p = projection.project(x, "tsne", {k}, 0, use_cache=False, perplexity=5.0)
    print("coords", bool(np.isfinite(p.coords).all()))
except UserInputError as exc:
    print("refused", exc)
"""


@pytest.mark.parametrize("scale,constant,k,expect", [
    (1.0, True, 2, "refused Every sample"), (1.0, True, 3, "refused Every sample"),
    (1e-25, False, 2, "coords True"), (1e150, False, 3, "coords True"), (1.0, False, 2, "coords True")])
def test_tsne_never_crashes_the_process(scale, constant, k, expect, tmp_path):
    """Regression: scikit-learn's Barnes-Hut t-SNE died with a segmentation fault (taking the whole
    server with it) on a constant layer and on spreads whose squared distances under/overflow.
    Run in a child process so that a regression fails this test instead of killing the run."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    code = TSNE_CRASH.format(root=root, scale=scale, constant=constant, k=k)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "REPLENS_STORE": str(tmp_path)})
    assert out.returncode == 0, f"child died with {out.returncode}: {out.stderr[-500:]}"
    assert out.stdout.strip().startswith(expect), out.stdout
