"""The Similarity and Projections views above the in-memory limit: they read the on-disk activation
cache (exact linear CKA in two passes, incremental PCA) or a seeded subsample (and say how many
rows), and a sample count above what a view takes falls back to its limit with a note."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import activations, data, models, projection, streaming, views
from analysis.activations import cache as cache_mod
from analysis.errors import UserInputError
from analysis.similarity import similarity_matrix
from analysis.spec import AnalysisSpec
from analysis.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(cache_mod, "CHUNK_BYTES", 4 * 64 * 96)  # ~96-row chunks: many per layer


@pytest.fixture
def caches(small_chunks):
    ds = data.load("digits_noisy", n=900, seed=2)
    a, b = models.load("zoo:mlp-s0"), models.load("zoo:cnn-s0")
    ca = activations.extract_chunked(a, ds, ["net.fc1", "net.relu2", "net.logits"], batch_size=32)
    cb = activations.extract_chunked(b, ds, ["net.conv2", "net.gap"], batch_size=48)  # other chunk sizes
    return ca, cb, {k: c.read() for k, c in ca.items()}, {k: c.read() for k, c in cb.items()}


# ------------------------------------------------------------------ exact streamed CKA
@pytest.mark.parametrize("measure", ["linear_cka", "debiased_linear_cka"])
def test_streamed_cka_equals_the_in_memory_value_on_the_same_rows(caches, measure):
    ca, cb, xa, xb = caches
    assert ca["net.fc1"].record.chunks > 5 and ca["net.fc1"].record.chunk_rows != cb["net.gap"].record.chunk_rows
    ab, aa, bb = streaming.linear_cka(ca, cb, debiased=measure == "debiased_linear_cka")
    for got, x, y in ((ab, xa, xb), (aa, xa, xa), (bb, xb, xb)):
        ref = similarity_matrix(x, y, measure)
        assert list(got.index) == list(ref.index) and list(got.columns) == list(ref.columns)
        np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-8)
    assert np.allclose(np.diag(aa.to_numpy()), 1.0)
    assert ab.to_numpy().std() > 0.02  # the layers differ: a comparison that could fail


def _cache_of(store, key: str, x: np.ndarray, chunk_rows: int):
    cache = cache_mod.create_cache(store, key, len(x), x.shape[1], "float32", 16, "as is", chunk_rows=chunk_rows)
    for i in range(cache.record.chunks):
        cache_mod.write_chunk(cache, i, x[cache.record.chunk_slice(i)])
    return cache


def test_a_huge_offset_changes_no_streamed_value(tmp_path):
    """Values on a 1/16 grid stay exact in float32 after adding 1e6, so the data are the same up to
    the offset; centring before any product keeps the offset out of the sums."""
    rng = np.random.default_rng(0)
    x = rng.integers(-64, 64, size=(1000, 12)) / 16
    y = np.tanh(x @ rng.normal(size=(12, 9))) * 16 // 1 / 16 + rng.integers(-8, 8, size=(1000, 9)) / 16
    store = Store(tmp_path / "s")
    plain = {"x": _cache_of(store, "k1", x.astype(np.float32), 128)}
    shifted = {"x": _cache_of(store, "k2", (x + 1e6).astype(np.float32), 128)}
    other = {"y": _cache_of(store, "k3", y.astype(np.float32), 64)}
    assert np.array_equal(shifted["x"].read().astype(np.float64) - 1e6, x)  # the offset data are exact
    for debiased in (False, True):
        base = streaming.linear_cka(plain, other, debiased)[0].to_numpy()
        moved = streaming.linear_cka(shifted, other, debiased)[0].to_numpy()
        ref = similarity_matrix({"x": x}, {"y": y}, "debiased_linear_cka" if debiased else "linear_cka").to_numpy()
        np.testing.assert_allclose(moved, base, rtol=0, atol=1e-10)
        np.testing.assert_allclose(base, ref, rtol=0, atol=1e-10)
        assert 0.05 < base[0, 0] < 0.95


# ------------------------------------------------------------------ the views, streamed at a low limit
@pytest.fixture
def low_limit(monkeypatch, small_chunks):
    monkeypatch.setattr(streaming, "IN_MEMORY_LIMIT", 300)


def _spec(page: str, **params) -> AnalysisSpec:
    return AnalysisSpec(page, {"a": "zoo:mlp-s0", "b": "zoo:mlp-s1", "data": "digits_noisy", "n": 800,
                               "seed": 3, **params})


def test_similarity_view_streams_exactly_above_the_limit(low_limit, monkeypatch, tmp_path):
    view = views.get("similarity")
    spec = _spec("similarity", layers_a=["net.fc1", "net.relu2", "net.logits"], layers_b=["net.fc2", "net.fc3"])
    streamed = view.compute(spec, sections=["matrices", "drill"])
    m = streamed.matrices
    assert "exact over all 800 samples" in m.note and "streamed from the activation cache" in m.note
    monkeypatch.setattr(streaming, "IN_MEMORY_LIMIT", 20_000)  # the in-memory path, in a store of its own
    memory = view.compute(spec, sections=["matrices", "drill"], store=Store(tmp_path / "other"))
    assert memory.matrices.note == ""
    for got, ref in ((m.ab, memory.matrices.ab), (m.aa, memory.matrices.aa), (m.bb, memory.matrices.bb)):
        np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-8)
    assert m.best == [(a, b, pytest.approx(v, abs=1e-8)) for a, b, v in memory.matrices.best]
    # the drill-down: PCA on every row (equal to the in-memory PCA up to sign), 300 drawn
    d, ref = streamed.drill, memory.drill
    assert (d.cell_a, d.cell_b) == (ref.cell_a, ref.cell_b) and d.value == pytest.approx(ref.value, abs=1e-8)
    assert len(d.rows) == 300 and d.coords_a.shape == (300, 2) and np.all(np.diff(d.rows) > 0)
    assert "PCA fitted on all 800 samples" in d.note and "the scatter draws 300" in d.note
    np.testing.assert_allclose(d.explained_a, ref.explained_a, rtol=1e-8)
    for got, full in ((d.coords_a, ref.coords_a), (d.coords_b, ref.coords_b)):
        for j in range(2):
            sign = np.sign(got[:, j] @ full[d.rows, j])
            np.testing.assert_allclose(sign * got[:, j], full[d.rows, j], atol=1e-6 * np.abs(full).max())


def test_measures_that_do_not_stream_use_a_subsample_and_say_how_many(low_limit):
    view = views.get("similarity")
    spec = _spec("similarity", measure="rbf_cka", layers_a=["net.fc1", "net.fc3"], layers_b=["net.fc2"])
    m = view.compute(spec, sections=["matrices"]).matrices
    assert "RBF CKA holds every sample in memory, so it used 300 of the 800 samples" in m.note
    assert "seed 3" in m.note
    # the same rows, read from the dataset in memory, give the same map
    ds = data.load("digits_noisy", n=800, seed=3)
    rows = streaming.subsample_rows(800, 300, 3)
    xa = activations.extract(models.load("zoo:mlp-s0"), ds, ["net.fc1", "net.fc3"])
    xb = activations.extract(models.load("zoo:mlp-s1"), ds, ["net.fc2"])
    ref = similarity_matrix({k: v[rows] for k, v in xa.items()}, {k: v[rows] for k, v in xb.items()}, "rbf_cka")
    np.testing.assert_allclose(m.ab.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-10)


def test_minibatch_size_streams_the_minibatch_estimator_and_calibration_is_refused(low_limit):
    view = views.get("similarity")
    spec = _spec("similarity", batch=128, layers_a=["net.fc1"], layers_b=["net.fc1", "net.fc2"])
    m = view.compute(spec, sections=["matrices"]).matrices
    assert "minibatch estimator" in m.note and "batches of 128 over all 800" in m.note
    with pytest.raises(UserInputError, match="at most 300 samples"):
        view.compute(AnalysisSpec("similarity", {**spec.params, "values": "calibrated"}), sections=["calibration"])


def test_statistics_and_comparison_stream_with_notes(low_limit):
    view = views.get("similarity")
    spec = _spec("similarity", layers_a=["net.fc3"], layers_b=["net.fc3"], stats=True, compare_on=True,
                 compare=["linear_cka", "svcca"])
    r = view.compute(spec, sections=["matrices", "drill", "statistics", "compare"])
    assert "use 800 of the 800" not in r.statistics.note and "300 of the 800 samples" in r.statistics.note
    assert r.statistics.ci_low <= r.statistics.value <= r.statistics.ci_high
    notes = views.similarity.compare_notes(r)
    assert "exact over all 800" in notes["linear_cka"] and "300 of the 800" in notes["svcca"]
    maps = views.similarity.compared(r)
    assert set(maps) == {"linear_cka", "svcca"}
    np.testing.assert_allclose(maps["linear_cka"].to_numpy(), r.matrices.ab.to_numpy(), atol=1e-12)


def test_projections_view_streams_pca_and_subsamples_umap_and_agreement(low_limit, monkeypatch, tmp_path):
    view = views.get("projections")
    spec = _spec("projections", colour="prediction of A")
    r = view.compute(spec)
    rows = streaming.subsample_rows(800, 300, 3)
    e = r.projection_a
    assert np.array_equal(e.rows, rows) and e.coords.shape == (300, 2) and r.alignment.coords_b.shape == (300, 2)
    assert "PCA fitted incrementally on all 800 samples" in e.note and "draw 300 of them" in e.note
    assert "used 300 of the 800 samples" in r.agreement.note and r.agreement.per_sample.shape == (300,)
    ds = data.load("digits_noisy", n=800, seed=3)
    np.testing.assert_array_equal(r.alignment.rows, np.asarray(ds.indices)[rows])
    colours = views.projections.colouring(r, ds, "prediction of A")
    np.testing.assert_array_equal(colours.values, r.predictions_a.predictions[rows])
    # PCA of every row, equal to the in-memory PCA up to sign
    x = activations.extract(models.load("zoo:mlp-s0"), ds, ["net.logits"])["net.logits"]
    coords, ratio = projection.pca(x, 2)
    np.testing.assert_allclose(e.explained, ratio, rtol=1e-8)
    for j in range(2):
        sign = np.sign(e.coords[:, j] @ coords[rows, j])
        np.testing.assert_allclose(sign * e.coords[:, j], coords[rows, j], atol=1e-6 * np.abs(coords).max())
    # the neighbourhood agreement on those rows equals the in-memory one on the same rows
    xb = activations.extract(models.load("zoo:mlp-s1"), ds, ["net.logits"])["net.logits"]
    np.testing.assert_allclose(r.agreement.per_sample, projection.knn_agreement(x[rows], xb[rows], k=10))
    # the figures and the table draw the same 300 points
    from analysis.figures import projections as figs

    ctx = view.context(spec)
    out = figs.all_figures(r, spec, ctx)
    assert sum(len(t.x) for t in out["view_a"].data) == 300
    assert len(figs.all_tables(r)["coordinates"]) == 300

    umap = view.compute(AnalysisSpec("projections", {**spec.params, "method": "tsne", "perplexity": 10.0}),
                        sections=["projection_a"]).projection_a
    assert umap.coords.shape == (300, 2) and "t-SNE holds every sample in memory, so it used 300 of the 800" \
        in umap.note


# ------------------------------------------------------------------ the sample limits
def test_links_above_the_in_memory_limit_reproduce_streaming_views_and_cap_the_others():
    spec, problems = AnalysisSpec.from_query("similarity", {"n": "30000", "data": "digits_noisy"})
    assert not problems and spec.params["n"] == 30000
    assert views.get("similarity").resolve(spec) == (spec, [])
    assert AnalysisSpec.from_query("similarity", spec.to_query())[0] == spec  # the share link round trip
    other = AnalysisSpec.from_query("vector-field", {"n": "30000", "data": "digits_noisy"})[0]
    fitted, notes = views.get("vector-field").resolve(other)
    assert fitted.params["n"] == 20_000
    assert any("holds every sample in memory, so it takes at most 20,000 samples (asked for 30,000)" in n
               for n in notes), notes
    with pytest.raises(UserInputError, match="must lie between 10 and 1000000"):
        AnalysisSpec.from_query("similarity", {"n": "1000001"}, strict=True)


def test_cli_refuses_an_n_a_view_cannot_take_with_the_reason(capsys):
    from analysis.__main__ import main

    assert main(["vector-field", "--n", "25000", "--quiet"]) == 2
    assert "at most 20,000 samples" in capsys.readouterr().err


# ------------------------------------------------------------------ 25,000 samples, for real
def test_similarity_at_25000_samples_through_the_view_and_the_cli(tmp_path):
    spec = AnalysisSpec("similarity", {"a": "zoo:mlp-s0", "b": "zoo:mlp-s1", "data": "digits_noisy", "n": 25000})
    r = views.get("similarity").compute(spec, sections=["matrices", "drill"])
    assert "exact over all 25,000 samples" in r.matrices.note
    assert r.drill.coords_a.shape == (5000, 2) and "PCA fitted on all 25,000" in r.drill.note
    proc = subprocess.run([sys.executable, "-m", "analysis", "similarity", "--data", "digits_noisy", "--n", "25000",
                           "--store", str(tmp_path / "cli-store"), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    cli = pd.read_csv(tmp_path / "out" / "similarity_AB.csv", index_col=0)
    np.testing.assert_allclose(cli.to_numpy(), r.matrices.ab.to_numpy(), rtol=0, atol=1e-9)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["provenance"]["data"]["rows"] == 25000


@pytest.mark.usefixtures("apptest_navigation")
def test_a_page_that_holds_every_row_caps_a_link_above_its_limit_with_a_note():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page("pages/models.py")
    at.query_params["data"], at.query_params["n"] = "digits_noisy", "30000"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.number_input(key="n").value == 20_000
    infos = " ".join(i.value for i in at.info)
    assert "The Models view holds every sample in memory, so it takes at most 20,000 samples (asked for 30,000)" \
        in infos, infos
    assert at.query_params["n"] in ("20000", ["20000"])


def test_streamed_estimates_count_the_cache_and_a_low_ceiling_still_refuses():
    from analysis.jobs.limits import Limits

    view = views.get("similarity")
    spec = AnalysisSpec("similarity", {"data": "digits_noisy", "n": 100_000})
    plan = view.plan(spec, ["matrices"])
    (_, cost), = plan.parts
    # both models written to the cache (2 x 100,000 rows) and the two passes: tens of seconds, and
    # the memory of the cross-products (1,556 features: ~18 MB) and a window, not of 100,000 rows
    assert 20 < cost.seconds < 600 and cost.bytes < 300 * 2**20
    in_memory = 8.0 * 100_000 * 1556  # what holding the activations alone would take
    assert cost.bytes < in_memory / 2
    with pytest.raises(UserInputError, match="over this server's limit .* not started"):
        Limits(max_seconds=5.0, memory_bytes=2**40).check(plan.task)
    rbf = view.plan(AnalysisSpec("similarity", {**spec.params, "measure": "rbf_cka"}), ["matrices"]).parts[0][1]
    assert rbf.bytes <= 2e9  # the subsample's Gram matrices stay within RepLens's bound
