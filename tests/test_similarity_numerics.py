"""Numbers a reviewer cannot fault: every CKA entry point against the single-pair value under large
constant offsets and extreme scales, Kornblith's RBF bandwidth convention, and calibrated scores
(the measure beside its permutation null)."""
import numpy as np
import pytest

from analysis import similarity as S
from analysis.errors import UserInputError

RNG = np.random.default_rng(11)
X = RNG.normal(size=(200, 30))
Y = np.tanh(X @ RNG.normal(size=(30, 20))) + 0.3 * RNG.normal(size=(200, 20))
CKA = ["linear_cka", "debiased_linear_cka", "rbf_cka"]
SHIFTS = [1e6, 1e7, 1e8]


# ----------------------------------------------------------------------------- large offsets
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("name", CKA)
def test_single_pair_ignores_a_constant_offset(name, shift):
    """Translation invariance, to the precision the shifted data still hold (eps x shift ~ 1e-8)."""
    assert S.compute(name, X + shift, Y) == pytest.approx(S.compute(name, X, Y), abs=1e-6)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("name", CKA)
def test_layer_matrix_equals_the_single_pair_value_under_a_large_offset(name, shift):
    """The heatmap's cell (stacked centred Gram matrices) equals the single-pair function on the
    unshifted data. Before the fix the Gram matrix was formed before centring: at a shift of 1e8
    the linear CKA cell read 0.06 where the value is 0.52."""
    ref = S.compute(name, X, Y)
    df = S.similarity_matrix({"a": X + shift, "a2": X[:, :7] + shift}, {"b": Y}, name)
    assert df.loc["a", "b"] == pytest.approx(ref, abs=1e-6)
    assert df.loc["a2", "b"] == pytest.approx(S.compute(name, X[:, :7], Y), abs=1e-6)


@pytest.mark.parametrize("name", ["linear_cka", "debiased_linear_cka"])
def test_feature_form_of_the_matrix_ignores_a_large_offset(monkeypatch, name):
    monkeypatch.setattr(S, "GRAM_MEMORY_BYTES", 0)  # large n: the feature form per pair
    df = S.similarity_matrix({"a": X + 1e8}, {"b": Y - 3e7}, name)
    assert df.iloc[0, 0] == pytest.approx(S.compute(name, X, Y), abs=1e-6)


@pytest.mark.parametrize("shift", SHIFTS)
def test_minibatch_estimator_ignores_a_large_offset(shift):
    """Minibatch CKA (in memory and the streaming accumulator) against HSIC_1 per batch of the
    unshifted data, written out with the reference formula."""
    df = S.similarity_matrix({"a": X + shift}, {"b": Y}, "linear_cka", batch_size=50)
    parts = S.batch_slices(len(X), 50)

    def hsic(a, b):
        return S.hsic_unbiased(S.linear_gram(a), S.linear_gram(b))

    cross = np.mean([hsic(X[s], Y[s]) for s in parts])
    ref = cross / np.sqrt(np.mean([hsic(X[s], X[s]) for s in parts]) * np.mean([hsic(Y[s], Y[s]) for s in parts]))
    assert df.iloc[0, 0] == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("name", CKA)
def test_permutation_null_ignores_a_large_offset(name):
    """The permutation test's null: each permuted value equals the measure on the unshifted,
    permuted rows (same seed, same permutations)."""
    p_shift, null_shift = S.permutation_test(X + 1e8, Y, name, n_perm=20, seed=3)
    rng = np.random.default_rng(3)
    ref = [S.compute(name, X, Y[rng.permutation(len(Y))]) for _ in range(20)]
    np.testing.assert_allclose(null_shift, ref, atol=1e-6)
    assert p_shift == pytest.approx(1 / 21)


def test_calibrated_matrix_ignores_a_large_offset():
    cal = S.calibrated_matrix({"a": X + 1e8}, {"b": Y + 1e7}, "linear_cka", n_perm=10, seed=2)
    ref = S.calibrated(X, Y, "linear_cka", n_perm=10, seed=2, use_cache=False)
    assert cal.value.iloc[0, 0] == pytest.approx(ref.value, abs=1e-6)
    assert cal.null_mean.iloc[0, 0] == pytest.approx(ref.null_mean, abs=1e-6)


def test_euclidean_rsa_ignores_a_large_offset():
    assert S.rsa(X + 1e8, Y, rdm="euclidean") == pytest.approx(S.rsa(X, Y, rdm="euclidean"), abs=1e-6)


# ----------------------------------------------------------------------------- extreme scales
SCALE_INVARIANT = [name for name, m in S.MEASURES.items() if m.invariances["isotropic scaling"]]


@pytest.mark.parametrize("scale", [1e100, 1e-100])
@pytest.mark.parametrize("name", SCALE_INVARIANT)
def test_extreme_scales_give_the_unscaled_value(name, scale):
    """Every measure that claims isotropic-scale invariance reads the same at 1e+-100 (before: linear
    CKA read 0 or NaN, debiased CKA raised OverflowError). Single pair and layer matrix."""
    ref = S.compute(name, X, Y)
    assert S.compute(name, X * scale, Y) == pytest.approx(ref, abs=1e-9)
    assert S.compute(name, X * scale, Y / scale) == pytest.approx(ref, abs=1e-9)
    df = S.similarity_matrix({"a": X * scale}, {"b": Y}, name)
    assert df.iloc[0, 0] == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("scale", [1e100, 1e-100])
def test_minibatch_estimator_at_extreme_scales(scale):
    ref = S.similarity_matrix({"a": X}, {"b": Y}, "linear_cka", batch_size=64).iloc[0, 0]
    df = S.similarity_matrix({"a": X * scale}, {"b": Y}, "linear_cka", batch_size=64)
    assert df.iloc[0, 0] == pytest.approx(ref, abs=1e-12)


def test_rescaling_is_by_a_power_of_two():
    """The internal rescaling divides the centred features by 2^e (exact), leaving the largest entry
    in [0.5, 1), whatever the input's scale."""
    for scale in (1.0, 1e100, 1e-100, 3e-7):
        t, e = S.kernels._centred(X * scale)
        peak = np.abs(t.numpy()).max()
        assert 0.5 <= peak < 1
        np.testing.assert_allclose(np.ldexp(t.numpy(), e), X * scale - (X * scale).mean(0), rtol=1e-12,
                                   atol=1e-14 * scale)


# ----------------------------------------------------------------------------- RBF bandwidth
def test_rbf_median_averages_the_two_middle_values():
    """Points 0, 1, 2, 4 on a line: the 16 squared distances sorted are
    0 0 0 0 1 1 1 1 4 4 4 4 9 9 16 16; the two middle ones are 1 and 4, so the median is 2.5
    (np.median, Kornblith's code); the lower median would be 1."""
    x = np.array([[0.0], [1.0], [2.0], [4.0]])
    d2 = (x - x.T) ** 2
    np.testing.assert_allclose(S.rbf_gram(x, threshold=0.8).numpy(), np.exp(-d2 / (2 * 0.8 ** 2 * 2.5)), rtol=1e-14)
    assert np.median(d2) == 2.5


def test_rbf_two_points_follow_the_reference_median():
    """n = 2 at distance 3: distances 0, 9, 9, 0, median (0 + 9) / 2 = 4.5, so k(x1, x2) = exp(-1)."""
    k = S.rbf_gram(np.array([[0.0, 0.0], [3.0, 0.0]])).numpy()
    assert k[0, 1] == pytest.approx(np.exp(-1.0), rel=1e-14)


@pytest.mark.parametrize("seed", [0, 1, 6, 7])
def test_rbf_duplicated_rows_do_not_collapse_the_bandwidth(seed):
    """6 copies of a and 4 of b: 52 of the 100 squared distances are exactly 0, so the median is 0 and
    the median of the non-zero distances, d(a, b)^2, is the bandwidth: k(a, b) = exp(-1/2). Computed
    through the Gram matrix, the zeros come out as rounding residues (7e-15 for these rows), which
    taken as the median made k(a, b) = 0."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=30) + 3.7, rng.normal(size=30) + 3.7
    x = np.array([a] * 6 + [b] * 4)
    k = S.rbf_gram(x).numpy()
    assert k[0, 7] == pytest.approx(np.exp(-0.5), rel=1e-12)
    assert np.all(k[:6, :6] == 1.0) and np.all(k[6:, 6:] == 1.0)


# ----------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("n", [50, 200, 800])
@pytest.mark.parametrize("name", ["linear_cka", "debiased_linear_cka", "mutual_knn", "procrustes"])
def test_calibrated_score_of_independent_data_is_near_zero(name, n):
    """Independent X and Y: the raw value depends on n (biased CKA 0.21 at n = 50, 0.02 at n = 800),
    the calibrated score does not. Its spread under the null is null_std / (1 - null_mean), at most
    0.036 at n = 50 for these measures: |score| stays within 3 of those, and so below 0.11 at n = 50
    and far below 0.1 beyond."""
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, 20)), rng.normal(size=(n, 10))
    c = S.calibrated(x, y, name, n_perm=100, seed=1)
    spread = c.null_std / (c.top - c.null_mean)
    assert abs(c.score) <= 3 * spread
    assert abs(c.score) < (0.11 if n == 50 else 0.05)
    assert c.p_value > 0.01


@pytest.mark.parametrize("name", ["linear_cka", "rbf_cka", "debiased_linear_cka", "procrustes", "cca", "mutual_knn"])
def test_calibrated_score_of_a_rotated_copy_is_one(name):
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(30, 30)))
    c = S.calibrated(X, X @ q, name, n_perm=50, seed=0)
    assert c.value == pytest.approx(1.0, abs=1e-9)
    assert c.score == pytest.approx(1.0, abs=1e-9)
    assert c.p_value == pytest.approx(1 / 51)  # no permutation reaches a perfect match
    assert c.null_mean < 0.5


def test_calibration_is_the_reference_formula():
    """Value, null, score and p-value written out: the null is the measure on row-permuted Y with
    the permutations of numpy's default_rng(seed)."""
    c = S.calibrated(X, Y, "linear_cka", n_perm=30, seed=7, use_cache=False)
    rng = np.random.default_rng(7)
    null = np.array([S.linear_cka(X, Y[rng.permutation(len(Y))]) for _ in range(30)])
    value = S.linear_cka(X, Y)
    np.testing.assert_allclose(c.null, null, atol=1e-12)
    assert c.value == pytest.approx(value, abs=1e-12)
    assert c.null_mean == pytest.approx(null.mean(), abs=1e-12)
    assert c.null_std == pytest.approx(null.std(ddof=1), abs=1e-12)
    assert c.score == pytest.approx((value - null.mean()) / (1 - null.mean()), abs=1e-12)
    assert c.p_value == pytest.approx((1 + np.sum(null >= value)) / 31)


def test_calibrated_score_uses_the_measure_maximum():
    """The score divides by (top - null mean) with top the upper end of the value range, and works
    on arrays; a null at the maximum leaves nothing to calibrate (NaN)."""
    assert S.calibrated_score(0.5, 0.2, 1.0) == pytest.approx(0.375)
    assert S.calibrated_score(3.0, 1.0, 5.0) == pytest.approx(0.5)
    assert np.isnan(S.calibrated_score(1.0, 1.0, 1.0))
    np.testing.assert_allclose(S.calibrated_score(np.array([0.2, 1.0]), np.array([0.2, 0.2]), 1.0), [0.0, 1.0])


def test_p_values_are_roughly_uniform_for_independent_data():
    """Under independence the permutation p-value is (discretely) uniform: over 40 independent
    pairs about 5% fall below 0.05 (at most 6 of 40 here, 3 standard deviations above 2) and the mean
    is near 1/2; for dependent data it is the smallest possible, 1 / (1 + n_perm)."""
    rng = np.random.default_rng(5)
    ps = [S.calibrated(rng.normal(size=(40, 5)), rng.normal(size=(40, 4)), "linear_cka", n_perm=50, seed=i,
                       use_cache=False).p_value for i in range(40)]
    assert sum(p < 0.05 for p in ps) <= 6
    assert 0.35 < np.mean(ps) < 0.65
    assert S.calibrated(X, Y, "linear_cka", n_perm=50).p_value == pytest.approx(1 / 51)


def test_mutual_knn_null_sits_at_the_chance_level():
    """The permuted pairings of mutual k-NN have the known chance level k / (n - 1)."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 10)), rng.normal(size=(300, 10))
    c = S.calibrated(x, y, "mutual_knn", n_perm=60, seed=0, k=10)
    assert c.null_mean == pytest.approx(10 / 299, rel=0.1)


def test_calibration_is_cached_in_the_store(isolated_store):
    from analysis.store import default_store

    first = S.calibrated(X, Y, "rbf_cka", n_perm=20, seed=4)
    keys = default_store().keys("similarity")
    again = S.calibrated(X, Y, "rbf_cka", n_perm=20, seed=4)
    assert default_store().keys("similarity") == keys and len(keys) == 1
    np.testing.assert_array_equal(again.null, first.null)  # the stored bytes, read back
    assert S.calibrated(X, Y, "rbf_cka", n_perm=20, seed=5).null_mean != first.null_mean


@pytest.mark.parametrize("name", ["linear_cka", "debiased_linear_cka", "rsa", "mutual_knn", "svcca"])
def test_calibrated_matrix_cells_equal_the_single_pair_calibration(name):
    """Every heatmap cell of the calibrated matrix equals calibrated() on that pair: the same
    permutations (one shared set, drawn as calibrated() draws them)."""
    a = {"a0": X[:, :10], "a1": X}
    b = {"b0": Y, "b1": np.tanh(X[:, 5:25])}
    cal = S.calibrated_matrix(a, b, name, n_perm=15, seed=9)
    for i in a:
        for j in b:
            ref = S.calibrated(a[i], b[j], name, n_perm=15, seed=9, use_cache=False)
            assert cal.value.loc[i, j] == pytest.approx(ref.value, abs=1e-10)
            assert cal.null_mean.loc[i, j] == pytest.approx(ref.null_mean, abs=1e-10)
            assert cal.null_std.loc[i, j] == pytest.approx(ref.null_std, abs=1e-10)
            assert cal.score.loc[i, j] == pytest.approx(ref.score, abs=1e-10)
            assert cal.p_value.loc[i, j] == pytest.approx(ref.p_value)
    assert list(cal.score.index) == list(a) and list(cal.score.columns) == list(b)


def test_calibrated_matrix_of_a_constant_layer_is_nan():
    cal = S.calibrated_matrix({"ok": X, "dead": np.zeros((200, 3))}, {"b": Y}, "linear_cka", n_perm=5)
    assert np.isnan(cal.score.loc["dead", "b"]) and np.isnan(cal.p_value.loc["dead", "b"])
    assert np.isfinite(cal.score.loc["ok", "b"])


def test_cell_statistics_carry_the_null_and_the_calibrated_score():
    stats = S.cell_statistics(X, Y, "linear_cka", n_boot=20, n_perm=40)
    assert stats.null_std > 0
    assert stats.calibrated == pytest.approx((stats.value - stats.null_mean) / (1 - stats.null_mean))


def test_calibration_cost_estimate_grows_with_permutations():
    one = S.calibration_seconds(1000, [64, 128], [64], "linear_cka", n_perm=10)
    many = S.calibration_seconds(1000, [64, 128], [64], "linear_cka", n_perm=1000)
    assert 0 < one < many
    assert many - one == pytest.approx(99 * (S.calibration_seconds(1000, [64, 128], [64], "linear_cka", 20) - one))


def test_calibration_refuses_no_permutations():
    with pytest.raises(UserInputError, match="at least one permutation"):
        S.calibrated(X, Y, n_perm=0)


def test_layer_calibration_of_two_models_is_cached_and_matches_the_heatmap():
    """The heatmap's calibrated colour scale: values equal layer_similarity's, the second call is a
    store lookup, and two seeds of one architecture are far above chance everywhere."""
    from analysis import data, models

    ds = data.load("digits", n=150)
    a, b = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1")
    cal = S.layer_calibration(a, b, ds, "linear_cka", n_perm=20, seed=0)
    assert not cal.cached
    np.testing.assert_allclose(cal.value.to_numpy(), S.layer_similarity(a, b, ds, "linear_cka").to_numpy(), atol=1e-12)
    again = S.layer_calibration(a, b, ds, "linear_cka", n_perm=20, seed=0)
    assert again.cached
    np.testing.assert_array_equal(again.score.to_numpy(), cal.score.to_numpy())  # the stored null, read back
    assert (cal.score.to_numpy() > 0.3).all() and (cal.p_value.to_numpy() == 1 / 21).all()
    assert (cal.null_mean.to_numpy() < cal.value.to_numpy()).all()
