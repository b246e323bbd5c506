"""Similarity measures: known answers, identities, invariances from the registry, estimator
properties, the fast layer matrix against pair-by-pair values, minibatch and streaming paths."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from analysis import activations, data, models
from analysis import similarity as S
from analysis.errors import UserInputError

RNG = np.random.default_rng(0)
X = RNG.normal(size=(120, 12))
Y = np.tanh(X @ RNG.normal(size=(12, 9))) + 0.3 * RNG.normal(size=(120, 9))
ALL = list(S.MEASURES)


@pytest.mark.parametrize("name", ALL)
def test_identity_is_one(name):
    assert S.compute(name, X, X) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_symmetry_matches_registry(name):
    a, b = S.compute(name, X, Y), S.compute(name, Y, X)
    if S.MEASURES[name].symmetric:
        assert a == pytest.approx(b, abs=1e-10)
    else:
        assert abs(a - b) > 1e-6


@pytest.mark.parametrize("name", ALL)
def test_value_in_declared_range(name):
    lo, hi = S.MEASURES[name].value_range
    assert lo - 1e-9 <= S.compute(name, X, Y) <= hi + 1e-9


Q, _ = np.linalg.qr(RNG.normal(size=(12, 12)))
TRANSFORMS = {
    "orthogonal": lambda z: z @ Q,
    "isotropic scaling": lambda z: 7.3 * z,
    "invertible linear": lambda z: z @ (RNG.normal(size=(12, 12)) + 0.5 * np.eye(12)),
    "translation": lambda z: z + RNG.normal(size=12) * 3,
}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("invariance", list(TRANSFORMS))
def test_invariances_and_non_invariances_from_registry(name, invariance):
    """Every claim in the registry holds, both ways: invariant -> unchanged, not -> changes."""
    before = S.compute(name, X, Y)
    after = S.compute(name, TRANSFORMS[invariance](X), Y)
    if S.MEASURES[name].invariances[invariance]:
        assert after == pytest.approx(before, abs=1e-8)
    else:
        assert abs(after - before) > 1e-4


def test_linear_cka_hand_computed():
    # one-dimensional CKA is the squared Pearson correlation: 25^2 / (5 * 129)
    x = np.array([1.0, 2, 3, 4])
    assert S.linear_cka(x, x ** 2) == pytest.approx(625 / 645, abs=1e-12)


def test_gram_form_equals_feature_form():
    k, l = S.linear_gram(X), S.linear_gram(Y)
    kc, lc = S.center_gram(k), S.center_gram(l)
    gram = float((kc * lc).sum() / np.sqrt(float((kc * kc).sum()) * float((lc * lc).sum())))
    assert S.linear_cka(X, Y) == pytest.approx(gram, abs=1e-12)
    wide = RNG.normal(size=(20, 50))  # n < p takes the Gram branch inside linear_cka
    xw = wide @ RNG.normal(size=(50, 60))
    wc, xc = wide - wide.mean(0), xw - xw.mean(0)
    feature = np.sum((xc.T @ wc) ** 2) / (np.linalg.norm(wc.T @ wc) * np.linalg.norm(xc.T @ xc))
    assert S.measures._linear_cka_features(wide, xw) == pytest.approx(feature, abs=1e-12)


def test_hsic_biased_trace_formula():
    k, l = S.linear_gram(X), S.linear_gram(Y)
    n = len(X)
    h = np.eye(n) - 1 / n
    ref = np.trace(k.numpy() @ h @ l.numpy() @ h) / (n - 1) ** 2
    assert S.hsic_biased(k, l) == pytest.approx(ref, rel=1e-10)


def test_u_centering_equals_song_formula():
    k, l = S.linear_gram(X), S.linear_gram(Y)
    n = len(X)
    u = float((S.u_center_gram(k) * S.u_center_gram(l)).sum() / (n * (n - 3)))
    assert u == pytest.approx(S.hsic_unbiased(k, l), rel=1e-10)


def test_rbf_cka_approaches_linear_for_large_sigma():
    assert S.rbf_cka(X, Y, threshold=1e4) == pytest.approx(S.linear_cka(X, Y), abs=1e-6)
    assert abs(S.rbf_cka(X, Y, threshold=0.2) - S.linear_cka(X, Y)) > 1e-3


def test_biased_cka_of_independent_data_shrinks_with_n_debiased_stays_near_zero():
    rng = np.random.default_rng(1)
    biased, debiased = [], []
    for n in (30, 120, 480):
        a, b = rng.normal(size=(n, 200)), rng.normal(size=(n, 200))
        biased.append(S.linear_cka(a, b))
        debiased.append(S.debiased_linear_cka(a, b))
    assert biased[0] > 0.7 and biased[0] > biased[1] > biased[2]
    assert max(abs(d) for d in debiased) < 0.05


def test_one_minibatch_equals_full_debiased():
    full = S.debiased_linear_cka(X, Y)
    df = S.similarity_matrix({"x": X}, {"y": Y}, "linear_cka", batch_size=len(X))
    assert df.iloc[0, 0] == pytest.approx(full, abs=1e-12)


def test_minibatch_average_is_per_batch_hsic():
    acc = S.MinibatchCKA(["x"], ["y"])
    parts = [slice(0, 40), slice(40, 80), slice(80, 120)]
    for sl in parts:
        acc.update({"x": X[sl]}, {"y": Y[sl]})
    cross = np.mean([S.hsic_unbiased(S.linear_gram(X[s]), S.linear_gram(Y[s])) for s in parts])
    sx = np.mean([S.hsic_unbiased(S.linear_gram(X[s]), S.linear_gram(X[s])) for s in parts])
    sy = np.mean([S.hsic_unbiased(S.linear_gram(Y[s]), S.linear_gram(Y[s])) for s in parts])
    assert acc.values()[0, 0] == pytest.approx(cross / np.sqrt(sx * sy), abs=1e-12)


def test_small_last_batch_is_merged():
    assert S.batch_slices(10, 4) == [slice(0, 4), slice(4, 10)]
    assert S.batch_slices(12, 4) == [slice(0, 4), slice(4, 8), slice(8, 12)]
    with pytest.raises(UserInputError, match="at least 4"):
        S.batch_slices(10, 2)


@pytest.mark.parametrize("name", ALL)
def test_layer_matrix_equals_pair_by_pair(name):
    a = {f"a{i}": RNG.normal(size=(80, 6 + i)) for i in range(3)}
    b = {f"b{i}": np.tanh(a[f"a{i}"] @ RNG.normal(size=(6 + i, 5))) for i in range(3)}
    df = S.similarity_matrix(a, b, name)
    ref = np.array([[S.compute(name, a[i], b[j]) for j in b] for i in a])
    np.testing.assert_allclose(df.to_numpy(), ref, atol=1e-10)
    assert list(df.index) == list(a) and list(df.columns) == list(b)


@pytest.mark.parametrize("debiased", [False, True])
def test_feature_path_for_large_n_equals_gram_path(monkeypatch, debiased):
    name = "debiased_linear_cka" if debiased else "linear_cka"
    a, b = {"x": X, "x2": X[:, :5]}, {"y": Y}
    gram = S.similarity_matrix(a, b, name)
    monkeypatch.setattr(S, "GRAM_MEMORY_BYTES", 0)
    feat = S.similarity_matrix(a, b, name)
    np.testing.assert_allclose(feat.to_numpy(), gram.to_numpy(), atol=1e-12)


def test_constant_layer_gives_nan_and_names_it():
    a = {"ok": X, "dead": np.zeros((120, 4))}
    with pytest.warns(S.SimilarityWarning, match="A:dead"):
        df = S.similarity_matrix(a, {"y": Y}, "linear_cka")
    assert np.isnan(df.loc["dead", "y"]) and np.isfinite(df.loc["ok", "y"])
    assert "A:dead" in df.attrs["warnings"][0]
    for name in ALL:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.isnan(S.similarity_matrix(a, {"y": Y}, name).loc["dead", "y"]), name


def test_n_at_most_p_warns_for_cca_family_and_reads_one():
    a, b = RNG.normal(size=(30, 40)), RNG.normal(size=(30, 40))
    with pytest.warns(S.SimilarityWarning, match="reads ~1"):
        df = S.similarity_matrix({"a": a}, {"b": b}, "cca")
    assert df.iloc[0, 0] == pytest.approx(1.0, abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S.similarity_matrix({"a": a}, {"b": b}, "linear_cka")  # CKA: no such warning


def test_nan_in_activations_is_a_clear_error():
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(UserInputError, match=r"layer 'l1'.*NaN"):
        S.similarity_matrix({"l1": bad}, {"y": Y})


def test_misaligned_rows_are_refused():
    with pytest.raises(UserInputError, match="rows"):
        S.linear_cka(X, Y[:-1])


def test_mutual_knn_chance_level():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 20)), rng.normal(size=(400, 20))
    assert S.mutual_knn(a, b, k=10) == pytest.approx(10 / 399, abs=0.01)


def test_svcca_keeps_components_by_variance_fraction():
    """Singular values 10, 0.5, 0.5: the first direction explains 100/100.5 = 99.5% of the variance,
    so SVCCA at 99% keeps one. Comparing singular values instead (a bug in public code) keeps three."""
    rng = np.random.default_rng(4)
    u, _ = np.linalg.qr(rng.normal(size=(200, 3)))
    u -= u.mean(0)
    u, _ = np.linalg.qr(u)
    x = u * np.array([10.0, 0.5, 0.5])
    assert S.measures._orthonormal_basis(x, 0.99)[0].shape[1] == 1
    assert S.measures._orthonormal_basis(x, 0.996)[0].shape[1] == 2
    assert S.measures._orthonormal_basis(x, None)[0].shape[1] == 3


def test_procrustes_of_rotation_is_one_and_distance_conventions():
    assert S.procrustes(X, X @ Q) == pytest.approx(1.0, abs=1e-10)
    indep = S.procrustes(X, RNG.normal(size=X.shape))
    assert 0 < indep < 0.6


def test_statistics_ci_and_permutation():
    stats = S.cell_statistics(X, Y, "linear_cka", n_boot=100, n_perm=100)
    assert stats.ci_low <= stats.value <= stats.ci_high
    assert stats.p_value == pytest.approx(1 / 101)
    p_indep, null = S.permutation_test(X, RNG.normal(size=(120, 9)), n_perm=100)
    assert p_indep > 0.05 and null.shape == (100,)


def test_stability_curve_ends_at_full_value():
    curve = S.stability_curve(X, Y, sizes=[10, 40, 120], repeats=3)
    assert curve["n"].tolist() == [10, 40, 120]
    assert curve["mean"].iloc[-1] == pytest.approx(S.linear_cka(X, Y))
    assert curve["std"].iloc[-1] == 0


def test_per_class_similarity():
    labels = np.repeat([0, 1, 2], 40)
    table = S.per_class_similarity(X, Y, labels)
    assert table["n"].tolist() == [40, 40, 40]
    assert table["value"].iloc[0] == pytest.approx(S.linear_cka(X[:40], Y[:40]))


def test_layer_identification_two_seeds_of_the_same_architecture():
    """Kornblith et al.'s sanity check: each layer's best match in a twin trained from another seed
    is the layer at the same place."""
    ds = data.load("digits")
    a = activations.extract(models.load("zoo:mlp-s0"), ds)
    b = activations.extract(models.load("zoo:mlp-s1"), ds)
    df = S.similarity_matrix(a, b, "linear_cka")
    hits = sum(layer == match for layer, match, _ in S.best_matches(df))
    assert hits >= 0.7 * len(df)


def test_streaming_equals_in_memory_minibatch():
    ds = data.load("digits", n=403)  # 403 = 3 x 128 + 19: the last batch is kept (>= 4 rows)
    ma, mb = models.load("zoo:mlp-s0"), models.load("zoo:cnn-s0")
    streamed = S.streaming_cka(ma, mb, ds, batch_size=128)
    a, b = activations.extract(ma, ds), activations.extract(mb, ds)
    ref = S.MinibatchCKA(list(a), list(b))
    for sl in [slice(0, 128), slice(128, 256), slice(256, 384), slice(384, 403)]:
        ref.update({k: v[sl] for k, v in a.items()}, {k: v[sl] for k, v in b.items()})
    np.testing.assert_allclose(streamed.to_numpy(), ref.values(), atol=1e-6)


PEAK_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)  # one thread and one malloc arena: the allocator's footprint is repeatable
from analysis import data, models, similarity

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024  # MB

ds = data.load("digits_noisy", n={n})
ma, mb = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1")
similarity.streaming_cka(ma, mb, data.load("digits", n=600), batch_size=500)  # warm up allocators
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
df = similarity.streaming_cka(ma, mb, ds, batch_size=500)
assert df.notna().all().all()
print(status("VmHWM") - before)
"""


def test_streaming_memory_does_not_grow_with_n():
    """n = 100,000 digits-sized samples: the streaming estimator's extra peak memory matches that at
    n = 30,000 (the allocator's pools fill during the first ~40 batches, then stay flat), and stays
    far below the ~620 MB that holding both models' activations at n = 100,000 would take."""
    root = str(Path(__file__).resolve().parent.parent)
    peaks = {}
    for n in (30_000, 100_000):
        env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT.format(root=root, n=n)], capture_output=True,
                             text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[n] = float(out.stdout.strip().splitlines()[-1])
    print("streaming CKA extra peak memory (MB):", peaks)
    assert peaks[100_000] - peaks[30_000] < 40, peaks
    assert peaks[100_000] < 100, peaks


@pytest.mark.parametrize("name, gram", [(name, True) for name in ALL]
                         + [("linear_cka", False), ("debiased_linear_cka", False)])
def test_permuted_statistics_equal_recomputing(monkeypatch, name, gram):
    """A permutation null permutes each layer's statistic (a centred Gram matrix, a basis, a ranked
    RDM, neighbour lists) instead of recomputing it: the same numbers as evaluating the measure on
    the permuted rows. ``gram=False``: the feature form linear CKA takes when Gram matrices do not fit."""
    if not gram:
        monkeypatch.setattr(S, "GRAM_MEMORY_BYTES", 0)
    m = S.MEASURES[name]
    st = S.matrix._statistic(m, m.params, len(X))
    sx, sy = st.of(X), st.of(Y)
    perm = np.random.default_rng(5).permutation(len(X))
    assert st.pair(sx, sy) == pytest.approx(S.compute(name, X, Y), abs=1e-12)
    assert st.pair(sx, st.permute(sy, perm)) == pytest.approx(S.compute(name, X, Y[perm]), abs=1e-12)


def test_debiased_feature_form_equals_u_centred_gram_form():
    k, l = S.linear_gram(X), S.linear_gram(Y)
    ku, lu = S.u_center_gram(k), S.u_center_gram(l)
    gram = float((ku * lu).sum() / np.sqrt(float((ku * ku).sum()) * float((lu * lu).sum())))
    assert S.debiased_linear_cka(X, Y) == pytest.approx(gram, abs=1e-12)  # n > p: feature form
    wide = RNG.normal(size=(10, 30))  # n < p: Gram form
    assert np.isfinite(S.debiased_linear_cka(wide, wide[:, :20]))


def test_feature_form_survives_a_large_mean():
    """Features far from the origin (mean/spread 1e4): the feature form must match the U-centred Gram
    form, which centring makes immune to the offset (translation invariance)."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(300, 8))
    y = x @ rng.normal(size=(8, 6)) + rng.normal(size=(300, 6))
    shifted = x + 1e4
    ref = S.debiased_linear_cka(x, y)
    assert S.debiased_linear_cka(shifted, y) == pytest.approx(ref, abs=1e-9)
    k, l = S.linear_gram(shifted), S.linear_gram(y)
    ku, lu = S.u_center_gram(k), S.u_center_gram(l)
    assert float((ku * lu).sum() / np.sqrt(float((ku * ku).sum() * (lu * lu).sum()))) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_constant_layer_is_nan_for_single_pairs(name):
    assert np.isnan(S.compute(name, np.full((50, 3), 7.0), Y[:50]))


def test_streaming_merges_a_short_last_batch_like_batch_slices():
    ds = data.load("digits", n=130)  # 130 = 2 x 64 + 2: the last 2 rows join the second batch
    ma, mb = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s2")
    streamed = S.streaming_cka(ma, mb, ds, batch_size=64)
    a, b = activations.extract(ma, ds), activations.extract(mb, ds)
    in_memory = S.similarity_matrix(a, b, "linear_cka", batch_size=64)
    np.testing.assert_allclose(streamed.to_numpy(), in_memory.to_numpy(), atol=1e-6)
    assert streamed.attrs["n"] == 130 and streamed.attrs["batches"] == 2


def test_stacked_u_centring_equals_one_by_one():
    import torch

    grams = torch.stack([S.linear_gram(X), S.linear_gram(Y)])
    ref = torch.stack([S.u_center_gram(g) for g in grams])
    S.kernels._u_center_stack_(grams)
    torch.testing.assert_close(grams, ref, rtol=0, atol=1e-9)
