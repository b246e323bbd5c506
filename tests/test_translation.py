"""Latent space translation, relative projection, anchors, retrieval and zero-shot stitching."""
import warnings

import numpy as np
import pytest

from analysis import translation as T
from analysis.errors import UserInputError


def _rotation(d, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12))
    return x, 2.5 * x @ _rotation(12) + 4.0


def test_procrustes_is_orthogonal_and_recovers_rotation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6))
    r = _rotation(6, 3)
    est = T.procrustes(x, x @ r)
    np.testing.assert_allclose(est.T @ est, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(est, r, atol=1e-10)
    noisy = T.procrustes(x, rng.standard_normal((50, 6)))
    np.testing.assert_allclose(noisy.T @ noisy, np.eye(6), atol=1e-10)


def test_ortho_translation_recovers_rotated_scaled_shifted_copy(xy):
    x, y = xy
    idx = np.arange(20)
    z = T.Translator("ortho", scaling="global").fit(x[idx], y[idx]).transform(x)
    np.testing.assert_allclose(z, y, atol=1e-8)
    for method in ("linear", "l-ortho", "affine"):
        z = T.translate(x, x[idx], y[idx], method, "global")
        np.testing.assert_allclose(z, y, atol=1e-6)


def test_function_equals_object_and_per_feature_scaling_is_close(xy):
    x, y = xy
    idx = np.arange(60)
    obj = T.Translator("ortho").fit(x[idx], y[idx]).transform(x)
    np.testing.assert_array_equal(obj, T.translate(x, x[idx], y[idx], "ortho"))
    err = np.linalg.norm(obj - y) / np.linalg.norm(y - y.mean(0))
    assert err < 0.35  # per-feature scaling is not rotation equivariant: close, not exact


def test_padding_between_different_widths():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((80, 4))
    y = np.hstack([x @ _rotation(4, 5), np.zeros((80, 3))])  # 7-wide target that embeds a rotation of x
    t = T.Translator("ortho", "none").fit(x, y)
    assert t.R_.shape == (7, 7)
    z = t.transform(x)
    assert z.shape == (80, 7)
    np.testing.assert_allclose(z, y, atol=1e-8)
    back = T.Translator("ortho", "none").fit(y, x).transform(y)  # 7 -> 4: strip the padding
    np.testing.assert_allclose(back, x, atol=1e-8)


def test_affine_differs_from_linear_without_centering():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 3))
    y = x @ rng.standard_normal((3, 3)) + np.array([5.0, -2.0, 1.0])
    np.testing.assert_allclose(T.translate(x, x, y, "affine", "none"), y, atol=1e-8)
    assert np.abs(T.translate(x, x, y, "linear", "none") - y).max() > 0.5


def test_warns_when_anchors_do_not_exceed_dimension(xy):
    x, y = xy
    with pytest.warns(T.TranslationWarning, match="reproduces the anchors"):
        assert len(T.Translator("linear").fit(x[:12], y[:12]).warnings_) == 1
    with pytest.warns(T.TranslationWarning, match="ortho translation is not unique.*5 anchors fix at most 4"):
        assert T.Translator("ortho").fit(x[:5], y[:5]).warnings_
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough anchors, every unit varies: silent
        assert not T.Translator("linear").fit(x[:13], y[:13]).warnings_
        assert not T.Translator("ortho").fit(x[:13], y[:13]).warnings_
        assert not T.Translator("ortho", "none").fit(x[:12], y[:12]).warnings_  # no centring: 12 suffice


def test_orthogonal_translation_from_fewer_anchors_than_dimensions_is_not_unique():
    """5 anchors of a rotated 12-dimensional space: the standardised anchors span 4 directions, so a
    reflection H in a direction w orthogonal to all of them maps the anchors exactly as R does,
    while R and R H translate other samples differently. That is what the warning says."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, 12))
    y = x @ _rotation(12, 2)
    with pytest.warns(T.TranslationWarning, match="determine only 4 of the 12 directions"):
        t = T.Translator("ortho", "global").fit(x[:5], y[:5])
    assert "not unique" in t.warnings_[0]
    ys = (y[:5] - t.mean_y_) / t.scale_y_
    w = np.linalg.svd(ys, full_matrices=True)[2][-1]  # orthogonal to every standardised anchor of Y
    h = np.eye(12) - 2 * np.outer(w, w)
    xs = (x[:5] - t.mean_x_) / t.scale_x_
    assert np.abs(xs @ t.R_ @ h - xs @ t.R_).max() < 1e-12  # the same on the anchors
    others = (x[5:] - t.mean_x_) / t.scale_x_
    assert np.abs(others @ t.R_ @ h - others @ t.R_).max() > 0.1  # not on other samples


def test_units_that_never_fire_on_the_anchors_make_the_translation_not_unique():
    rng = np.random.default_rng(5)
    x = np.maximum(rng.standard_normal((200, 10)), 0)
    y = x @ _rotation(10, 1)
    x[:40, :3] = 0.0  # three ReLU units silent on the 40 anchors
    for method in ("ortho", "l-ortho", "linear"):
        with pytest.warns(T.TranslationWarning, match=r"3 unit\(s\) of X .* never change on the anchors"):
            t = T.Translator(method).fit(x[:40], y[:40])
        assert "determine only 7 of the 10" in t.warnings_[0] and "drop units that never fire" in t.warnings_[0]


def test_relative_projection_invariant_after_centering(xy):
    x, y = xy
    anchors = np.array([1, 5, 9, 30, 70])
    rx = T.relative_projection(x, x[anchors], center=True)
    ry = T.relative_projection(y, y[anchors], center=True)
    np.testing.assert_allclose(rx, ry, atol=1e-10)
    assert np.abs(T.relative_projection(x, x[anchors], center=False)
                  - T.relative_projection(y, y[anchors], center=False)).max() > 0.05  # the shift shows
    np.testing.assert_allclose(rx[anchors, np.arange(5)], 1.0)


@pytest.mark.parametrize("method", T.SELECTIONS)
def test_anchor_selection_distinct_and_sized(method):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((120, 5))
    labels = np.repeat(np.arange(4), 30)
    idx = T.select_anchors(x, 12, method, labels, seed=0)
    assert len(idx) == 12 and len(set(idx.tolist())) == 12 and idx.max() < 120
    if method == "class-balanced":
        assert np.bincount(labels[idx], minlength=4).tolist() == [3, 3, 3, 3]


def test_farthest_point_spreads_out():
    x = np.vstack([np.zeros((50, 2)), np.array([[10.0, 0], [0, 10.0], [-10.0, 0]])])
    idx = T.select_anchors(x, 4, "farthest-point", seed=0)
    assert {50, 51, 52} <= set(idx.tolist())


def test_retrieval_perfect_and_chance(xy):
    x, y = xy
    perfect = T.retrieval_scores(y, y)
    assert perfect["mrr"] == 1.0 and perfect["jaccard"] == 1.0 and perfect["top1"] == 1.0
    # hand-computed: three points, query 0 ranks its own match second
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    s = T.retrieval_scores(a, b, k=1)
    # query 0 = (1,0): cos with b0 0.6, b1 0, b2 1 -> rank 2; query 1: b1 rank 1; query 2: b0 .99, b1 .71, b2 .71 -> rank 2
    assert s["mrr"] == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_bad_inputs():
    with pytest.raises(UserInputError, match="Unknown translation"):
        T.Translator("nope").fit(np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(UserInputError, match="labels"):
        T.select_anchors(np.random.rand(10, 2), 3, "class-balanced")
    with pytest.raises(UserInputError, match="budget"):
        T.select_anchors(np.random.rand(10, 2), 30)


def test_retrieval_curve_lfm_beats_few_anchor_procrustes():
    """The paper's comparison in miniature: 5 anchors, a rotated noisy swiss roll embedded in 3-D."""
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(500, noise=0.05, random_state=0)
    y = x @ _rotation(3, 7) + np.random.default_rng(0).normal(0, 0.05, x.shape)
    r = T.retrieval_curve(x, y, [3], lfm_params={"metric": "euclidean"}, scaling="global")
    assert r["lfm+ortho"][0] > 0.5 and r["lfm_matches"][0] > 0.3


def test_an_anchor_sweep_does_not_repeat_the_underdetermined_warning_at_every_point():
    """Fitting on 3 anchors in 12-D warns; a sweep that starts there on purpose (its curve shows
    it) stays quiet, and the warning filter is restored afterwards."""
    import warnings

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12))
    y = x @ _rotation(12, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", T.TranslationWarning)
        T.retrieval_curve(x, y, [3, 5], lfm_params={"metric": "euclidean"})
        with pytest.raises(T.TranslationWarning):
            T.translate(x, x[:3], y[:3])


# ----------------------------------------------------------------- zero-shot stitching
@pytest.fixture(scope="module")
def two_seeds():
    from analysis import data, models

    ds = data.load("digits", n=400, seed=0)
    a, b = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1")
    return ds, a, b


def test_stitching_between_two_zoo_seeds_is_close_to_no_stitch(two_seeds):
    from analysis import stitching

    ds, a, b = two_seeds
    r = stitching.stitch_models(a, b, ds, "net.relu3", "net.relu3", [50], methods=("ortho",))
    assert str(r["head"]) == "model"
    assert r["upper"] > 0.9
    assert r["lower"] < 0.5  # another seed's units are in another order
    assert r["ortho"][0] > r["upper"] - 0.05


def test_model_head_reproduces_the_model(two_seeds):
    """B's head fed B's own layer gives B's own logits (the hook replaces the output by itself)."""
    import torch

    from analysis import activations, stitching

    ds, _, b = two_seeds
    xb = activations.extract(b, ds, ["net.relu2"])["net.relu2"]
    head = stitching.model_head(b, "net.relu2", ds, xb.shape[1])
    rows = np.arange(30)
    with torch.no_grad():
        direct = b.module(torch.from_numpy(ds.inputs[:30])).numpy()
    np.testing.assert_allclose(head(xb[rows], rows), direct, atol=1e-5)
    assert not b.module.net.relu2._forward_hooks  # hook removed


def test_probe_head_when_no_model_head():
    from analysis import stitching

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    xb = rng.standard_normal((200, 4)) + 3.0 * labels[:, None]
    xa = xb @ _rotation(4, 2)
    r = stitching.stitching_curve(xa, xb, labels, [20], methods=("ortho",), scaling="global")
    assert str(r["head"]) == "probe" and r["upper"] > 0.95
    assert r["ortho"][0] == pytest.approx(r["upper"], abs=1e-9)  # an exact rotation stitches perfectly
