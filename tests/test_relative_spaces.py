"""Invariant relative spaces (product of invariances): each similarity's projection is unchanged by
exactly the transformations it claims, the product by what they share, and the "invariant"
translator built on it."""
from __future__ import annotations

import numpy as np
import pytest

from analysis import relative_spaces as R
from analysis import translation as tr
from analysis.errors import UserInputError


@pytest.fixture
def xa():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))  # correlated, anisotropic
    return x, x[:12]


def _rotation(d, seed=1):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


TRANSFORMS = {
    "rotation": lambda x: x @ _rotation(x.shape[1]),
    "translation": lambda x: x + np.linspace(-3, 5, x.shape[1]),
    "rescaling": lambda x: 7.5 * x,
    "permutation": lambda x: x[:, np.random.default_rng(2).permutation(x.shape[1])],
    "sign flip": lambda x: x * np.where(np.arange(x.shape[1]) % 3 == 0, -1.0, 1.0),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("similarity", R.SIMILARITIES)
def test_each_projection_is_invariant_to_what_it_claims_and_only_that(transform, similarity, xa):
    x, anchors = xa
    t = TRANSFORMS[transform]
    before = R.invariant_projection(x, anchors, [similarity])
    after = R.invariant_projection(t(x), t(anchors), [similarity])
    if similarity in R.INVARIANCES[transform]:
        np.testing.assert_allclose(after, before, atol=1e-9)
    else:
        assert np.abs(after - before).max() > 0.05


def test_the_product_is_invariant_to_the_shared_transformations(xa):
    x, anchors = xa
    shared = [t for t, sims in R.INVARIANCES.items() if set(sims) == set(R.SIMILARITIES)]
    assert set(shared) == {"translation", "rescaling", "permutation", "sign flip"}

    def all_at_once(z):
        for name in shared:
            z = TRANSFORMS[name](z)
        return z

    before = R.invariant_projection(x, anchors)
    np.testing.assert_allclose(R.invariant_projection(all_at_once(x), all_at_once(anchors)), before, atol=1e-9)
    rotated = R.invariant_projection(TRANSFORMS["rotation"](x), TRANSFORMS["rotation"](anchors))
    assert np.abs(rotated - before).max() > 0.05  # the L1 and L-infinity parts see a rotation
    assert before.shape == (60, 4 * 12)


def test_without_the_normalisation_distances_are_not_scale_invariant(xa):
    x, anchors = xa
    raw = R.relative(x, anchors, "euclidean")
    np.testing.assert_allclose(R.relative(2 * x, 2 * anchors, "euclidean"), 2 * raw)  # what the normalisation removes
    np.testing.assert_allclose(R.relative(x[:3], anchors, "linf"),
                               -np.abs(x[:3, None, :] - anchors[None]).max(-1))


def test_invariant_translator_commutes_with_the_claimed_transformations(xa):
    x, _ = xa
    y = TRANSFORMS["translation"](TRANSFORMS["sign flip"](TRANSFORMS["permutation"](3.0 * x)))
    idx = np.arange(0, 60, 3)
    t = tr.Translator("invariant").fit(x[idx], y[idx], Y_fit=y)
    # x and y have identical invariant coordinates, so x translates to exactly what y's own coordinates decode to
    np.testing.assert_allclose(t.transform(x), t.inner_.decoder_.predict(t.inner_.project(y, "y")), atol=1e-9)
    fit = 1 - ((t.transform(x) - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert fit > 0.9


def test_invariant_is_a_translator_method_everywhere(xa):
    from analysis.stitching import stitching_curve

    assert "invariant" in tr.METHODS
    x, anchors = xa
    out = tr.Translator("invariant").fit(anchors, anchors[:, :5]).transform(x)
    assert out.shape == (60, 5)
    labels = (x[:, 0] > np.median(x[:, 0])).astype(int)
    curve = stitching_curve(x, x[:, ::-1].copy(), labels, [10, 20])
    assert set(tr.METHODS) <= set(curve) and np.isfinite(curve["invariant"]).all()
    with pytest.raises(UserInputError, match="anchors come in pairs"):
        tr.Translator("invariant").fit(anchors, anchors[:5])
    with pytest.raises(UserInputError, match="Fit the translator"):
        R.InvariantTranslator().transform(x)


def test_retrieval_of_a_transformed_copy_is_perfect_in_the_invariant_space(xa):
    x, _ = xa
    y = TRANSFORMS["rescaling"](TRANSFORMS["permutation"](TRANSFORMS["sign flip"](x)))
    curve = R.retrieval_curve(x, y, [5, 10])
    np.testing.assert_allclose(curve["invariant space"], 1.0)
    np.testing.assert_allclose(curve["relative"], 1.0)  # cosine: these are orthogonal maps and a rescaling
    assert list(curve["anchors"]) == [5.0, 10.0]
