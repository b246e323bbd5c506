"""Projections: PCA against scikit-learn, Procrustes alignment, neighbourhood agreement, caching,
uploaded coordinates (the view and the page: test_projections_view.py, test_projections_page.py)."""
import io

import numpy as np
import pytest

from analysis import projection as P
from analysis.errors import UserInputError

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 12)) @ RNG.normal(size=(12, 12))


def test_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    coords, ratio = P.pca(X, 3)
    ref = PCA(n_components=3).fit(X)
    ref_coords = ref.transform(X)
    for j in range(3):  # components agree up to sign
        sign = np.sign(coords[:, j] @ ref_coords[:, j])
        np.testing.assert_allclose(coords[:, j], sign * ref_coords[:, j], atol=1e-8)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, atol=1e-12)


def test_alignment_recovers_a_rotated_scaled_shifted_copy_exactly():
    a = RNG.normal(size=(100, 2))
    theta = 1.1
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    b = 3.0 * a @ rot + np.array([5.0, -2.0])
    al = P.align(a, b)
    np.testing.assert_allclose(al.aligned, a, atol=1e-10)
    assert al.residual < 1e-10 and al.scale == pytest.approx(1 / 3)
    reflected = a * np.array([1, -1])
    np.testing.assert_allclose(P.align(a, reflected).aligned, a, atol=1e-10)  # reflections allowed


def test_alignment_in_3d_and_shape_mismatch():
    a = RNG.normal(size=(50, 3))
    q, _ = np.linalg.qr(RNG.normal(size=(3, 3)))
    np.testing.assert_allclose(P.align(a, a @ q).aligned, a, atol=1e-10)
    with pytest.raises(UserInputError, match="shape"):
        P.align(a, a[:, :2])


def test_knn_agreement_identity_and_chance():
    assert np.all(P.knn_agreement(X, X, k=10) == 1.0)
    assert np.all(P.knn_agreement(X, 2 * X @ np.linalg.qr(RNG.normal(size=(12, 12)))[0], k=10) == 1.0)
    big = RNG.normal(size=(500, 10))
    shuffled = P.knn_agreement(big, big[RNG.permutation(500)], k=10)
    assert shuffled.mean() == pytest.approx(10 / 499, abs=0.01)


def test_cached_projection_is_not_recomputed(monkeypatch):
    first = P.project(X, "pca", 2)
    assert not first.cached
    monkeypatch.setattr(P, "pca", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    second = P.project(X, "pca", 2)
    assert second.cached
    np.testing.assert_array_equal(first.coords, second.coords)


def test_tsne_and_parameter_checks():
    p = P.project(X[:80], "tsne", 2, seed=1, perplexity=10)
    assert p.coords.shape == (80, 2) and np.isfinite(p.coords).all()
    with pytest.raises(UserInputError, match="perplexity"):
        P.project(X[:20], "tsne", perplexity=50)
    with pytest.raises(UserInputError, match="no parameter"):
        P.project(X, "pca", foo=1)
    with pytest.raises(UserInputError, match="2 or 3"):
        P.project(X, "pca", 4)


def test_umap_runs_and_is_seeded():
    a = P.project(X[:120], "umap", 2, seed=3, n_neighbors=10, use_cache=False)
    b = P.project(X[:120], "umap", 2, seed=3, n_neighbors=10, use_cache=False)
    assert a.coords.shape == (120, 2)
    np.testing.assert_allclose(a.coords, b.coords, atol=1e-5)


def test_uploaded_coordinates():
    buf = io.BytesIO()
    np.save(buf, RNG.normal(size=(30, 2)))
    p = P.from_coordinates(buf.getvalue(), "xy.npy", 30)
    assert p.coords.shape == (30, 2) and p.method == "precomputed"
    with pytest.raises(UserInputError, match="rows"):
        P.from_coordinates(buf.getvalue(), "xy.npy", 31)
    with pytest.raises(UserInputError, match="columns"):
        P.from_coordinates(b"a,b,c,d\n1,2,3,4\n5,6,7,8\n", "xy.csv", 2)


def test_layer_path_aligns_each_layer_to_the_previous():
    acts = {"l1": X, "l2": X @ np.linalg.qr(RNG.normal(size=(12, 12)))[0]}  # the same space, rotated
    path = P.layer_path(acts, "pca")
    np.testing.assert_allclose(path["l2"], path["l1"], atol=1e-8)
