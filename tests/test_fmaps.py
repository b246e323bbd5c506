"""Latent functional maps: known answers, invariances, and the bugs of the official code avoided."""
import numpy as np
import pytest

from analysis import fmaps
from analysis.errors import UserInputError


def _rotation(d, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


@pytest.fixture(scope="module")
def digits_x():
    from analysis import data

    return data.load("digits", n=300, seed=0).inputs.astype(np.float64)


@pytest.fixture(scope="module")
def swiss():
    from sklearn.datasets import make_swiss_roll

    rng = np.random.default_rng(0)
    x, t = make_swiss_roll(600, noise=0.05, random_state=0)
    y = 2.5 * x @ _rotation(3, 1) + 7.0 + rng.normal(0, 0.1, x.shape)
    return x, y, t


def test_rotated_scaled_shifted_copy_reads_one(digits_x):
    y = 3.0 * digits_x @ _rotation(64) - 5.0
    m = fmaps.LatentFunctionalMap(n_eigs=30, descriptors=()).fit(digits_x, y, rows_aligned=True)
    assert m.similarity() >= 0.99
    d = m.diagnostics()
    assert d["orthogonality_deviation"] < 1e-6 and d["laplacian_commutativity"] < 1e-6
    assert d["exact_matches"] == 1.0 and d["connected"] and d["converged"]


def test_shuffled_rows_read_clearly_lower(digits_x):
    perm = np.random.default_rng(1).permutation(len(digits_x))
    same = fmaps.LatentFunctionalMap(n_eigs=30, descriptors=()).fit(digits_x, digits_x, rows_aligned=True)
    shuffled = fmaps.LatentFunctionalMap(n_eigs=30, descriptors=()).fit(digits_x, digits_x[perm], rows_aligned=True)
    assert same.similarity() > 0.999
    assert shuffled.similarity() < 0.7
    # the magnitude-aware check: C^T C of the truth is I for the same graph, far from it for shuffled rows
    assert same.diagnostics()["truth_orthogonality_deviation"] < 1e-8
    assert shuffled.diagnostics()["truth_orthogonality_deviation"] > 0.5


def test_similarity_uses_ctc_not_c():
    # C = a rotation inside a degenerate eigenspace: C itself has off-diagonal mass, C^T C = I
    c = np.eye(6)
    c[1:3, 1:3] = [[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]]
    assert fmaps.offdiag_similarity(c) == pytest.approx(1.0)
    assert 1 - np.linalg.norm(c - np.diag(np.diag(c))) / np.linalg.norm(c) < 0.8


def test_laplacian_spectrum_in_0_2_with_zero_first(digits_x):
    w, _ = fmaps.knn_graph(digits_x, 15)
    assert abs(w - w.T).max() < 1e-12 and w.diagonal().max() == 0
    lap = fmaps.normalized_laplacian(w).toarray()
    full = np.linalg.eigvalsh(lap)
    assert full.min() > -1e-9 and full.max() < 2 + 1e-9
    s = fmaps.laplacian_spectrum(w, 20)
    assert s.eigenvalues[0] == pytest.approx(0, abs=1e-8)
    np.testing.assert_allclose(s.eigenvalues, full[:20], atol=1e-7)
    np.testing.assert_allclose(s.eigenvectors.T @ s.eigenvectors, np.eye(20), atol=1e-8)


def test_sparse_solver_matches_dense_above_the_dense_cutoff():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 5))
    w, _ = fmaps.knn_graph(x, 12, "euclidean")
    s = fmaps.laplacian_spectrum(w, 10)  # n > 400: ARPACK
    dense = np.linalg.eigvalsh(fmaps.normalized_laplacian(w).toarray())[:10]
    assert s.converged
    np.testing.assert_allclose(s.eigenvalues, dense, atol=1e-7)


def test_disconnected_graph_is_reported():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.1, (60, 3)), rng.normal(50, 0.1, (60, 3))])
    m = fmaps.LatentFunctionalMap(n_neighbors=5, n_eigs=8, descriptors=(), metric="euclidean")
    m.fit(x, x, rows_aligned=True)
    assert m.diagnostics()["components_x"] == 2 and not m.diagnostics()["connected"]
    assert m.eigenvalues_x_[1] == pytest.approx(0, abs=1e-8)
    assert any("disconnected" in w for w in m.warnings_)


def test_geodesic_descriptor_is_unit_free(swiss):
    x, _, _ = swiss
    anchors = np.array([3, 50, 400])
    _, d1 = fmaps.knn_graph(x, 10, "euclidean")
    _, d2 = fmaps.knn_graph(1000.0 * x, 10, "euclidean")
    np.testing.assert_allclose(fmaps.geodesic_descriptors(d1, anchors), fmaps.geodesic_descriptors(d2, anchors),
                               atol=1e-9)
    f = fmaps.geodesic_descriptors(d1, anchors)
    assert np.allclose(f[anchors, [0, 1, 2]], 1.0)  # distance 0 to itself


def test_hks_is_sum_of_squared_eigenvectors_at_time_zero():
    rng = np.random.default_rng(0)
    phi = np.linalg.qr(rng.standard_normal((40, 40)))[0]
    lam = np.sort(rng.uniform(0, 2, 40))
    hks = fmaps.heat_kernel_signature(lam, phi, np.array([0.0]))
    np.testing.assert_allclose(hks[:, 0], 1.0)  # complete orthonormal basis: rows have unit norm


def test_energy_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    n, k, p = 50, 6, 3
    phi_x = np.linalg.qr(rng.standard_normal((n, k)))[0]
    phi_y = np.linalg.qr(rng.standard_normal((n, k)))[0]
    lx, ly = np.sort(rng.random(k)), np.sort(rng.random(k))
    A, B, lap, mx, my = fmaps._energy_terms(phi_x, phi_y, lx, ly, rng.random((n, p)), rng.random((n, p)), 1e-3)
    C = rng.standard_normal((k, k))
    e, g = fmaps.fmap_energy(C, A, B, lap, mx, my, 1.0, 0.5, 0.3)
    E = np.zeros_like(C)
    E[2, 4] = 1e-6
    num = (fmaps.fmap_energy(C + E, A, B, lap, mx, my, 1.0, 0.5, 0.3)[0]
           - fmaps.fmap_energy(C - E, A, B, lap, mx, my, 1.0, 0.5, 0.3)[0]) / 2e-6
    assert num == pytest.approx(g[2, 4], rel=1e-5)
    # the solver's C is a stationary point of the energy
    F, G = rng.random((n, p)), rng.random((n, p))
    C_opt = fmaps.solve_functional_map(phi_x, phi_y, lx, ly, F, G)
    A, B, lap, mx, my = fmaps._energy_terms(phi_x, phi_y, lx, ly, F, G, 1e-3)
    assert np.abs(fmaps.fmap_energy(C_opt, A, B, lap, mx, my, 1.0, 1e-3, 1e-1)[1]).max() < 1e-6


def test_noisy_rotated_swiss_roll_with_five_anchors(swiss):
    x, y, _ = swiss
    anchors = np.random.default_rng(3).choice(len(x), 5, replace=False)
    m = fmaps.LatentFunctionalMap(metric="euclidean").fit(x, y, anchors=np.stack([anchors, anchors], 1))
    p2p = m.correspondence()
    assert p2p.shape == (len(y),)
    exact = np.mean(p2p == np.arange(len(y)))
    near = np.mean(np.linalg.norm(x[p2p] - x, axis=1) < 1.5)  # within a few neighbours on the roll
    assert exact > 0.3 and near > 0.9  # chance: 1/600 exact


def test_correspondence_direction_is_y_to_x(swiss):
    """p2p[j] is the row of X matched with row j of Y (the official FM_T has it backwards)."""
    x, y, _ = swiss
    perm = np.random.default_rng(5).permutation(len(x))
    yp = y[perm]  # row j of yp is row perm[j] of x
    anchors = np.random.default_rng(3).choice(len(x), 8, replace=False)
    pairs = np.stack([perm[anchors], anchors], 1)
    m = fmaps.LatentFunctionalMap(metric="euclidean").fit(x, yp, anchors=pairs)
    assert np.mean(m.correspondence() == perm) > 0.3


def test_labels_descriptor_and_match_quality(digits_x):
    from analysis import data

    labels = data.load("digits", n=300, seed=0).labels
    y = digits_x @ _rotation(64, 2)
    m = fmaps.LatentFunctionalMap(n_eigs=30, descriptors=("labels",)).fit(digits_x, y, labels=labels,
                                                                          rows_aligned=True)
    q = fmaps.match_quality(m.correspondence(), labels)
    assert q["same_class"] > 0.8 > q["chance_class"] + 0.5


def test_bad_inputs_raise_user_errors(digits_x):
    with pytest.raises(UserInputError, match="descriptor"):
        fmaps.LatentFunctionalMap(descriptors=("nope",)).fit(digits_x, digits_x)
    with pytest.raises(UserInputError, match="No descriptor"):
        fmaps.LatentFunctionalMap(descriptors=("geodesic",)).fit(digits_x, digits_x)
    with pytest.raises(UserInputError, match="rows"):
        fmaps.LatentFunctionalMap().fit(digits_x, digits_x[:10], rows_aligned=True)


def test_robustness_curve_starts_at_one(digits_x):
    from analysis import data

    labels = data.load("digits", n=300, seed=0).labels
    r = fmaps.robustness_curve(digits_x, labels, 3, [0.0, 2.0], n_eigs=20)
    assert r["lfm"][0] == pytest.approx(1.0) and r["cka"][0] == pytest.approx(1.0)
    assert r["cka"][1] < 0.99


def test_fit_arrays_is_the_fitted_map_as_plain_arrays(digits_x):
    """The library's array form of a fit (for notebooks and scripts) agrees with the estimator."""
    rng = np.random.default_rng(2)
    y = digits_x @ _rotation(64, 3) + rng.normal(0, 0.05, digits_x.shape)
    anchors = rng.choice(len(digits_x), 10, replace=False)
    out = fmaps.fit_arrays(digits_x, y, anchors, n_embed=3, n_eigs=20)
    m = fmaps.LatentFunctionalMap(n_eigs=20).fit(digits_x, y, anchors=anchors, rows_aligned=True)
    np.testing.assert_allclose(out["C"], m.C_, atol=1e-12)
    np.testing.assert_array_equal(out["p2p"], m.correspondence())
    assert out["phi_x"].shape == (len(digits_x), 3) and float(out["diag_similarity"]) == pytest.approx(m.similarity())


# ----------------------------------------------------------------- calibrated similarity
@pytest.mark.parametrize("n", [200, 500])
def test_calibrated_similarity_of_unrelated_spaces_is_near_zero(n):
    """Unrelated spaces: the raw LFM similarity rises with n/K (about 0.42 at n = 200, 0.53 at 500, K = 50)
    and means nothing alone; its permutation null rises with it, and the calibrated score stays within
    3.5 null spreads (null_std / (1 - null_mean), ~0.013) of 0."""
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, 20)), rng.normal(size=(n, 20))
    c = fmaps.calibrated_similarity(x, y, n_perm=60, seed=1)
    assert c.value > 0.35  # the raw score is far from 0
    spread = c.null_std / (1 - c.null_mean)
    assert abs(c.score) <= 3.5 * spread and abs(c.score) < 0.06
    assert c.value == pytest.approx(c.null_mean, abs=4 * c.null_std)


def test_calibrated_similarity_of_a_rotated_copy_is_one(digits_x):
    y = 3.0 * digits_x @ _rotation(64) - 5.0
    c = fmaps.calibrated_similarity(digits_x, y, n_perm=40, seed=0, n_eigs=30)
    assert c.value >= 0.99 and c.score >= 0.98 and c.p_value == pytest.approx(1 / 41)
    assert c.null_mean < 0.7


def test_permutation_null_equals_refitting_on_permuted_rows(swiss):
    """The null permutes Phi_Y's rows instead of rebuilding the graph and its spectrum: the same
    value as fitting the map to the permuted rows (kNN graph of permuted rows = permuted graph)."""
    x, y, _ = swiss
    m = fmaps.LatentFunctionalMap(n_eigs=30, descriptors=()).fit(x, y, rows_aligned=True)
    null = fmaps.permutation_null(m.eigenvectors_x_, m.eigenvectors_y_, n_perm=2, seed=3)
    rng = np.random.default_rng(3)
    for value in null:
        refit = fmaps.LatentFunctionalMap(n_eigs=30, descriptors=()).fit(x, y[rng.permutation(len(y))],
                                                                        rows_aligned=True)
        assert value == pytest.approx(refit.similarity(), abs=1e-8)
    c = m.calibrated(n_perm=2, seed=3)
    np.testing.assert_allclose(c.null, null, atol=1e-15)
    assert c.value == m.similarity() and c.p_value == pytest.approx(1 / 3)


def test_calibration_needs_aligned_rows_and_is_cached(swiss, monkeypatch):
    x, y, _ = swiss
    unaligned = fmaps.LatentFunctionalMap(n_eigs=10).fit(x, y, anchors=np.array([[0, 0], [5, 5], [9, 9]]))
    with pytest.raises(UserInputError, match="rows aligned"):
        unaligned.calibrated()
    first = fmaps.calibrated_similarity(x[:200], y[:200], n_perm=5, n_eigs=10)
    monkeypatch.setattr(fmaps.LatentFunctionalMap, "fit", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("refitted")))
    again = fmaps.calibrated_similarity(x[:200], y[:200], n_perm=5, n_eigs=10)
    np.testing.assert_array_equal(again.null, first.null)  # the stored bytes, read back


# ------------------------------------------------------------------ the scalable path (large n)
def test_sampled_zoomout_recovers_a_permutation_exactly():
    """Y = X with rows permuted: its eigenvectors are Phi_X's rows permuted, the true C is I, and a
    ZoomOut whose steps see only 60 of 400 rows still returns the permutation for every row."""
    rng = np.random.default_rng(0)
    phi_x = np.linalg.qr(rng.standard_normal((400, 12)))[0]
    perm = rng.permutation(400)
    phi_y = phi_x[perm]
    C, p2p = fmaps.zoomout(np.eye(4), phi_x, phi_y, k_start=4, k_end=12, n_sample=60, seed=1)
    assert np.array_equal(p2p, perm)
    assert np.allclose(C, np.eye(12), atol=1e-10)


def test_sampled_zoomout_with_every_row_is_zoomout():
    rng = np.random.default_rng(2)
    phi_x = np.linalg.qr(rng.standard_normal((300, 10)))[0]
    phi_y = np.linalg.qr(phi_x + 0.05 * rng.standard_normal((300, 10)))[0]
    C0 = rng.standard_normal((5, 5))
    full = fmaps.zoomout(C0, phi_x, phi_y, 5, 10)
    same = fmaps.zoomout(C0, phi_x, phi_y, 5, 10, n_sample=300)
    assert np.array_equal(full[1], same[1]) and np.array_equal(full[0], same[0])


def test_point_map_blocks_do_not_change_matches(monkeypatch):
    rng = np.random.default_rng(3)
    q, p = rng.standard_normal((500, 8)), rng.standard_normal((700, 8))
    brute = np.argmin(((q[:, None, :] - p[None, :, :]) ** 2).sum(-1), axis=1)
    assert np.array_equal(fmaps.nearest_rows(q, p), brute)
    monkeypatch.setattr(fmaps, "BLOCK_ENTRIES", 700 * 20)  # blocks of 20 queries
    assert np.array_equal(fmaps.nearest_rows(q, p), brute)


@pytest.fixture(params=["faiss", "no faiss"])
def faiss_or_not(request, monkeypatch):
    """Run a test with faiss (requirements-fast.txt), and again as if it were not installed."""
    if request.param == "faiss":
        pytest.importorskip("faiss")
    else:
        monkeypatch.setattr(fmaps, "_faiss", lambda: None)
    return request.param


def test_point_map_fast_search_is_the_brute_force(faiss_or_not):
    rng = np.random.default_rng(4)
    q, p = rng.standard_normal((400, 12)), rng.standard_normal((900, 12))
    brute = np.argmin(((q[:, None, :] - p[None, :, :]) ** 2).sum(-1), axis=1)
    assert np.array_equal(fmaps.nearest_rows(q, p, fast=True), brute)


def test_single_precision_spectrum_of_a_path_is_the_known_one():
    """The path graph on n vertices: its normalised Laplacian has the simple eigenvalues
    1 - cos(pi j / (n - 1)) (n = 450 > 400, so ARPACK runs, here in float32). The eigenvalues are
    Rayleigh quotients in float64, so they come out far better than float32's 1e-7."""
    import scipy.sparse as sp

    n = 450
    W = sp.diags([np.ones(n - 1), np.ones(n - 1)], [1, -1]).tocsr()
    s = fmaps.laplacian_spectrum(W, 6, single=True)
    assert s.converged
    np.testing.assert_allclose(s.eigenvalues, 1 - np.cos(np.pi * np.arange(6) / (n - 1)), atol=1e-6)  # measured 1e-7
    np.testing.assert_allclose(s.eigenvectors.T @ s.eigenvectors, np.eye(6), atol=1e-10)
    # the eigenvectors are cosines: phi_j(i) proportional to sqrt(deg_i) cos(pi j i / (n - 1))
    i = np.arange(n)
    deg = np.where((i == 0) | (i == n - 1), 1.0, 2.0)
    truth = np.sqrt(deg)[:, None] * np.cos(np.pi * np.outer(i, np.arange(6)) / (n - 1))
    truth /= np.linalg.norm(truth, axis=0)
    # to float32's tolerance over the gap: the first gaps are 2e-5 wide (measured overlap 0.998)
    assert np.abs(np.abs((truth * s.eigenvectors).sum(0)) - 1).max() < 5e-3


def test_single_precision_solver_matches_dense():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 5))
    w, _ = fmaps.knn_graph(x, 12, "euclidean")
    s = fmaps.laplacian_spectrum(w, 10, single=True)
    dense, vecs = np.linalg.eigh(fmaps.normalized_laplacian(w).toarray())
    assert s.converged
    np.testing.assert_allclose(s.eigenvalues, dense[:10], atol=1e-8)
    # the same subspace: the singular values of the overlap are all 1
    np.testing.assert_allclose(np.linalg.svd(vecs[:, :10].T @ s.eigenvectors, compute_uv=False), 1, atol=1e-6)


def test_approximate_neighbors_recall_against_exact():
    pytest.importorskip("faiss")
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((20, 16)) * 3
    x = centres[rng.integers(0, 20, 4000)] + rng.standard_normal((4000, 16))
    dist, idx = fmaps.approximate_neighbors(x, 51)
    exact_d, exact_i = NearestNeighbors(n_neighbors=51).fit(x).kneighbors(x)
    recall = np.mean([len(np.intersect1d(a, b)) / 51 for a, b in zip(idx, exact_i)])
    assert recall > 0.95  # measured 0.997
    assert np.all(np.diff(dist, axis=1) >= 0) and np.all(idx >= 0)
    same = idx == exact_i  # where the neighbour is the exact one, so is its distance (float32)
    np.testing.assert_allclose(dist[same], exact_d[same], atol=1e-3)


def test_knn_graph_without_faiss_is_the_exact_graph(monkeypatch):
    x = np.random.default_rng(6).standard_normal((300, 5))
    exact_w, exact_d = fmaps.knn_graph(x, 10)
    monkeypatch.setattr(fmaps, "_faiss", lambda: None)
    w, d = fmaps.knn_graph(x, 10, approximate=True)
    assert (w != exact_w).nnz == 0 and (d != exact_d).nnz == 0


def test_scalable_path_agrees_with_the_reference(swiss, faiss_or_not):
    """The threshold lowered so the 600-point swiss roll takes the scalable path (approximate kNN
    where faiss is installed, float32 eigen-solve, sampled ZoomOut): the similarity stays the
    reference's to 1e-3 (measured 2e-5), the matches from 5 anchors stay as good."""
    x, y, _ = swiss
    anchors = np.random.default_rng(3).choice(len(x), 5, replace=False)
    pairs = np.stack([anchors, anchors], 1)
    ref = fmaps.LatentFunctionalMap(metric="euclidean", scalable_from=None).fit(x, y, anchors=pairs, rows_aligned=True)
    new = fmaps.LatentFunctionalMap(metric="euclidean", scalable_from=100, zoomout_sample=200).fit(
        x, y, anchors=pairs, rows_aligned=True)
    assert new.scalable_ and not ref.scalable_
    assert new.similarity() == pytest.approx(ref.similarity(), abs=1e-3)
    exact_ref = np.mean(ref.p2p_ == np.arange(len(y)))
    exact_new = np.mean(new.p2p_ == np.arange(len(y)))
    near = np.mean(np.linalg.norm(x[new.p2p_] - x, axis=1) < 1.5)
    assert exact_new > 0.9 and near > 0.99 and abs(exact_new - exact_ref) < 0.05  # measured 0.998 vs 0.997
    # the default threshold leaves a 600-point fit on the reference path, bit for bit
    default = fmaps.LatentFunctionalMap(metric="euclidean").fit(x, y, anchors=pairs, rows_aligned=True)
    assert not default.scalable_ and np.array_equal(default.p2p_, ref.p2p_)


def test_cost_model_follows_the_scalable_path():
    from analysis import fmaps_cost as cost

    steps = cost.ZOOMOUT_STEPS
    at_threshold = fmaps.SCALABLE_FROM
    assert cost.zoomout_seconds(at_threshold, 50, True) == cost.point_map_seconds(at_threshold, 50, steps)
    n = 4 * fmaps.SCALABLE_FROM  # one point map on every row, the other steps on the sample
    sampled = cost.zoomout_seconds(n, 50, True)
    faiss = 0.6 if cost.faiss_installed() else 1.0  # faiss's search of the point maps
    assert sampled == pytest.approx(faiss * 4.5e-11 * 50 * n * (n + (steps - 1) * fmaps.ZOOMOUT_SAMPLE))
    assert sampled < cost.point_map_seconds(n, 50, steps) / 3
    assert cost.zoomout_seconds(n, 50, False) == pytest.approx(faiss * cost.point_map_seconds(n, 50))
    # point-map blocks: 2,048 queries while they hold under 2^24 distances, then a fixed budget
    assert cost.point_map_bytes(1000) == 12 * 2048 * 1000
    assert cost.point_map_bytes(100_000) == cost.point_map_bytes(200_000) == 12 * fmaps.BLOCK_ENTRIES
