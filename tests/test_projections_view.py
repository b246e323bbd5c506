"""The Projections view (analysis.views.projections): the default view's golden numbers, sections
stored under what they depend on, the layer walk, uploaded coordinates, colourings and estimates."""
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from analysis import projection, views
from analysis.errors import UserInputError
from analysis.figures import projections as figs
from analysis.jobs import Limits
from analysis.spec import AnalysisSpec
from analysis.store import default_store
from analysis.views import projections as pv

GOLDEN = Path(__file__).resolve().parent / "golden" / "projections"
MLP_LAYERS = ["net.fc1", "net.relu1", "net.fc2", "net.relu2", "net.fc3", "net.relu3", "net.logits"]


def spec(**params) -> AnalysisSpec:
    return AnalysisSpec("projections", params)


@pytest.fixture
def count_projections(monkeypatch):
    """The layers projected from here on (each call of analysis.projection.project)."""
    calls = []
    original = projection.project

    def counted(x, method="pca", *args, **kwargs):
        calls.append(method)
        return original(x, method, *args, **kwargs)

    monkeypatch.setattr(projection, "project", counted)
    return calls


def test_default_view_gives_the_golden_numbers():
    """The pre-refactor CLI's default view (python -m analysis projections, fresh store)."""
    result = views.run(spec())
    got = figs.all_tables(result)["coordinates"]
    golden = pd.read_csv(GOLDEN / "coordinates.csv")
    assert list(got.columns) == list(golden.columns)
    np.testing.assert_allclose(got.to_numpy(float), golden.to_numpy(float), rtol=0, atol=1e-10)
    numbers = json.loads((GOLDEN / "summary.json").read_text())["numbers"]
    assert pv.summary(result)["mean k-NN agreement"] == pytest.approx(numbers["mean k-NN agreement"], abs=1e-10)
    assert result.walk_a is None and result.walk_b is None  # the layer walk runs on demand only


def test_b_is_aligned_to_a_and_the_residual_is_procrustes():
    result = views.run(spec(n=120, proj_a="net.fc2"))
    a, b_raw = result.projection_a.coords, result.projection_b.coords
    al = projection.align(a, b_raw)
    np.testing.assert_allclose(result.alignment.coords_b, al.aligned, atol=1e-12)
    assert result.alignment.residual == pytest.approx(al.residual)
    same = views.run(spec(n=120, b="zoo:mlp-s0", proj_a="net.fc2", proj_b="net.fc2"))
    assert same.alignment.residual < 1e-10  # one layer against itself: the views coincide
    assert np.all(same.agreement.per_sample == 1.0)


def test_a_parameter_of_another_method_recomputes_nothing(count_projections):
    views.run(spec(n=80))
    assert count_projections == ["pca", "pca"]
    views.run(spec(n=80, umap_k=30, perplexity=12.0))  # not PCA's parameters
    assert count_projections == ["pca", "pca"]
    views.run(spec(n=80, proj_b="net.fc1"))  # only B's layer changed: only B is projected
    assert count_projections == ["pca", "pca", "pca"]


def test_the_walk_reuses_the_views_projections_and_aligns_each_layer_to_the_previous(count_projections):
    views.run(spec(n=90))
    walk = views.run(spec(n=90, walk=True), sections=["walk_a"]).walk_a
    assert walk.layers == MLP_LAYERS
    assert len(count_projections) == 2 + len(MLP_LAYERS) - 1  # the last layer was projected for view A
    ctx = views.get("projections").context(spec(n=90))
    raw = {name: pv.embedding(ctx, "a", name, lambda f, m: None).coords for name in MLP_LAYERS}
    np.testing.assert_allclose(walk.coords["net.fc1"], raw["net.fc1"])
    for prev, name in zip(MLP_LAYERS, MLP_LAYERS[1:]):
        np.testing.assert_allclose(walk.coords[name], projection.align(walk.coords[prev], raw[name]).aligned,
                                   atol=1e-9)
    assert views.run(spec(n=90, walk=True, path_model="B"), sections=["walk_b"]).walk_b.side == "B"


def test_cli_spec_with_a_layer_the_model_lacks_says_which_layers_exist():
    with pytest.raises(UserInputError, match="has no layer 'nope'.*net.fc1"):
        views.run(spec(n=50, proj_a="nope"))


# ------------------------------------------------------------------ uploaded coordinates
def _npy(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_uploaded_coordinates_replace_a_and_set_the_dimension():
    xyz = np.random.default_rng(1).normal(size=(60, 3))
    upload_id = pv.store_coordinates(_npy(xyz), "xyz.npy", 60)
    assert len(upload_id) == 16 and pv.store_coordinates(_npy(xyz), "again.npy", 60) == upload_id  # by content
    stored = pv.load_coordinates(upload_id)
    np.testing.assert_array_equal(stored, xyz.astype(np.float32))  # uploads are read as float32
    s = spec(n=60, coords=upload_id)
    fixed, notes = views.get("projections").resolve(s)
    assert fixed.params["dims"] == 3 and any("3 dimensions" in n for n in notes)
    result = views.run(fixed)
    np.testing.assert_array_equal(result.projection_a.coords, stored)
    assert result.projection_a.method == "precomputed" and result.alignment.coords_b.shape == (60, 3)


def test_uploaded_coordinates_that_no_longer_fit_fall_back_with_a_note():
    upload_id = pv.store_coordinates(_npy(np.zeros((60, 2)) + np.arange(60)[:, None]), "xy.npy", 60)
    fixed, notes = views.get("projections").resolve(spec(n=80, coords=upload_id))
    assert fixed.params["coords"] is None and any("60 rows" in n and "80" in n for n in notes)
    fixed, notes = views.get("projections").resolve(spec(n=60, coords="0123456789abcdef"))
    assert fixed.params["coords"] is None and any("upload the file again" in n.lower() for n in notes)


def test_hostile_or_wrong_coordinate_files_are_refused_and_nothing_is_stored(tmp_path):
    from tests.conftest import PickleExploit

    marker = tmp_path / "pwned"
    hostile = _npy(np.array([PickleExploit(marker)] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(UserInputError, match="never unpickles"):
        pv.store_coordinates(hostile, "evil.npy", 4)
    with pytest.raises(UserInputError, match="rows"):
        pv.store_coordinates(_npy(np.zeros((5, 2))), "xy.npy", 6)
    assert not marker.exists() and default_store().blobs(pv.COORDS_KIND) == []
    with pytest.raises(UserInputError, match="16 hex"):
        pv.load_coordinates("../../etc/passwd")


# ------------------------------------------------------------------ colours
def _result_with(pred_a=None, pred_b=None, agreement=None):
    return pv.Result(predictions_a=pred_a, predictions_b=pred_b, agreement=agreement)


DS = SimpleNamespace(labels=np.array([0, 1, 2, 1]), label_names=["zero", "one", "two"])


def test_colourings_from_predictions_labels_and_agreement():
    pred = pv.Predictions("zoo:x", np.array([0, 2, 2, 1]), "accuracy")
    c = pv.colouring(_result_with(pred_a=pred), DS, "A correct")
    np.testing.assert_array_equal(c.values, [1, 0, 1, 1])
    assert c.names == ["wrong", "correct"] and not c.note
    c = pv.colouring(_result_with(pred_b=pred), DS, "prediction of B")
    np.testing.assert_array_equal(c.values, [0, 2, 2, 1])
    assert c.names == DS.label_names
    agree = pv.Agreement(np.array([0.1, 0.5, 1.0, 0.0]), 2, 2 / 3)
    c = pv.colouring(_result_with(agreement=agree), DS, "neighbourhood agreement")
    assert c.kind == "continuous" and c.values is agree.per_sample


def test_colourings_that_do_not_exist_fall_back_to_the_labels_with_a_note():
    none = pv.Predictions("hf:x", None, "no labels: the k-NN probe needs labels")
    c = pv.colouring(_result_with(pred_a=none), DS, "A correct")
    np.testing.assert_array_equal(c.values, DS.labels)
    assert "A makes no class predictions" in c.note and "k-NN probe" in c.note
    c = pv.colouring(_result_with(), DS, "neighbourhood agreement")
    assert c.kind == "category" and "not computed" in c.note
    unlabelled = SimpleNamespace(labels=None, label_names=None)
    c = pv.colouring(_result_with(pred_b=pv.Predictions("x", np.zeros(4, int), "")), unlabelled, "B correct")
    assert c.values is None and "labels" in c.note


def test_predictions_come_from_the_models_evaluation():
    from analysis import data, evaluate, models

    result = views.run(spec(n=70, colour="prediction of B"))
    assert result.predictions_a is None  # not asked for
    expected = evaluate.evaluate(models.load("zoo:mlp-s1"), data.load("digits", n=70)).predictions
    np.testing.assert_array_equal(result.predictions_b.predictions, expected)


# ------------------------------------------------------------------ estimates
def test_agreement_is_refused_before_it_starts_when_its_matrices_do_not_fit():
    view = views.get("projections")
    plan = view.plan(spec(n=1500, split="all"), ["agreement"])
    assert plan.cost.bytes == 24 * 1500 ** 2  # an n x n similarity matrix and two temporaries
    small = Limits(max_seconds=600, memory_bytes=40 * 10**6)
    with pytest.raises(UserInputError, match="neighbourhood agreement.*Use fewer samples"):
        small.check(plan.task)
    small.check(view.plan(spec(n=1000, split="all"), ["agreement"]).task)  # 24 MB fits


def test_estimates_count_only_what_is_not_stored_and_umaps_start_once():
    view = views.get("projections")
    s = spec(n=200, method="umap")
    parts = dict(view.plan(s, ["projection_a", "projection_b"]).parts)
    start = projection.start_seconds("umap")
    assert parts["projection_a"].seconds >= start > parts["projection_b"].seconds
    views.run(spec(n=200), sections=["projection_a", "projection_b"])
    assert view.plan(spec(n=200), ["projection_a", "projection_b"]).task is None  # stored: nothing to do
    walk = view.plan(spec(n=200, walk=True), ["walk_a"])
    one_layer = projection.estimate_seconds(200, 64, "pca")
    assert walk.cost.seconds < len(MLP_LAYERS) * one_layer + 1.0
