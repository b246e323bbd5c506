"""AppTest tests of the Similarity page (the browser test that clicks a cell is in test_browser.py)."""
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis import data, models
from analysis import similarity as sim

APP = str(Path(__file__).resolve().parent.parent / "app.py")


pytestmark = pytest.mark.usefixtures("apptest_navigation")


def open_page(**widgets) -> AppTest:
    """The Similarity page with widgets (by key) set as a user would. URL parameters are covered by
    the browser tests: AppTest clears them on switch_page and does not re-seed bound widgets."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("pages/similarity.py").run()
    for key, value in widgets.items():
        at.get_widget(key).set_value(value) if hasattr(at, "get_widget") else _widget(at, key).set_value(value)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _widget(at, key):
    for kind in ("selectbox", "number_input", "toggle", "multiselect"):
        try:
            return getattr(at, kind)(key=key)
        except KeyError:
            continue
    raise KeyError(key)


def figure(at, index=0) -> dict:
    import json

    return json.loads(at.get("plotly_chart")[index].proto.spec)


def array(value) -> np.ndarray:
    """Plotly 7 sends numpy arrays as typed arrays: {"dtype", "bdata" (base64), "shape"}."""
    import base64

    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(v) for v in shape.split(",")]
        return arr.reshape(shape) if shape else arr
    return np.array(value, dtype=float)


def test_default_view_shows_three_heatmaps_and_drill_down():
    at = open_page()
    charts = at.get("plotly_chart")
    assert len(charts) >= 5  # A-B, A-A, B-B, drill-down scatter, stability (+ per class)
    ab = figure(at, 0)
    heat = ab["data"][0]
    assert heat["type"] == "heatmap"
    assert heat["y"][0] == "net.fc1" and len(heat["x"]) == 7
    ds = data.load("digits", n=500)
    ref = sim.layer_similarity(models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1"), ds)
    np.testing.assert_allclose(array(heat["z"]), ref.to_numpy(), atol=1e-9)
    # colours span the values shown by default (near-identical models still show their differences)
    shown = np.concatenate([array(figure(at, i)["data"][0]["z"]).ravel() for i in range(3)])
    assert heat["zmin"] == pytest.approx(shown.min()) and heat["zmax"] == pytest.approx(shown.max())
    at.toggle(key="stretch").set_value(False).run()
    heat = figure(at, 0)["data"][0]
    assert heat["zmin"] == 0 and heat["zmax"] == 1
    best = [t for t in ab["data"] if t.get("name") == "best match in B"][0]
    assert len(best["x"]) == 7
    stats = at.toggle(key="stats")
    if not stats.value:  # the page leaves statistics it expects to be slow (a busy machine) to the user
        stats.set_value(True).run()
    labels = [m.label for m in at.metric]
    assert {"Linear CKA", "95% bootstrap CI", "Permutation p-value"} <= set(labels)
    assert not at.error


def test_drill_down_follows_the_chosen_cell():
    at = open_page()
    at.selectbox(key="cell_a").set_value("net.relu2")
    at.selectbox(key="cell_b").set_value("net.fc3").run()
    value = [m for m in at.metric if m.label == "Linear CKA"][0].value
    ds = data.load("digits", n=500)
    from analysis import activations

    xa = activations.extract(models.load("zoo:mlp-s0"), ds, ["net.relu2"])["net.relu2"]
    xb = activations.extract(models.load("zoo:mlp-s1"), ds, ["net.fc3"])["net.fc3"]
    assert float(value) == pytest.approx(sim.linear_cka(xa, xb), abs=1e-4)


def test_measure_and_its_parameter():
    at = open_page(measure="mutual_knn", k=5)
    assert at.selectbox(key="measure").value == "mutual_knn"
    assert at.number_input(key="k").value == 5
    heat = figure(at, 0)["data"][0]
    assert heat["zmax"] <= 1
    assert not at.error


def test_cca_warns_when_samples_do_not_exceed_dimensions():
    at = open_page(n=60, measure="cca")
    assert any("reads ~1" in w.value for w in at.warning)


def test_compare_measures_draws_one_map_per_measure():
    at = open_page()
    before = len(at.get("plotly_chart"))
    at.toggle(key="compare_on").set_value(True).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == before + 4


def test_incompatible_data_is_a_message():
    at = open_page(a="hf:minilm", data="digits")
    assert any("reads text" in e.value for e in at.error)


def test_long_runs_wait_for_the_button(monkeypatch):
    monkeypatch.setattr(sim.cost, "FLOPS_PER_SECOND", 3e7)  # about 100 s: long, under the server's ceiling
    at = open_page()
    assert any("Will compute" in i.value for i in at.info)
    assert not at.get("plotly_chart")
    [b for b in at.button if b.label == "Compute"][0].click().run()
    assert at.get("plotly_chart")


def test_a_job_over_the_servers_ceiling_is_refused_with_the_way_around(monkeypatch):
    monkeypatch.setenv("REPLENS_MAX_JOB_S", "60")
    monkeypatch.setattr(sim.cost, "FLOPS_PER_SECOND", 1e6)  # hours
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("pages/similarity.py").run()
    errors = [e.value.replace("\\", "") for e in at.error]  # markdown escapes, as the page sends them
    assert any("over this server" in e and "REPLENS_MAX_JOB_S" in e and "minibatch" in e for e in errors), errors
    assert not at.get("plotly_chart") and not at.exception


def test_calibrated_values_colour_the_map_by_distance_from_chance():
    at = open_page(n=120)
    at.radio(key="values").set_value("calibrated").run()
    assert not at.exception, [e.value for e in at.exception]
    fig = figure(at, 0)
    assert "0 = chance" in fig["layout"]["title"]["text"]
    z = array(fig["data"][0]["z"])
    ds = data.load("digits", n=120)
    a, b = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1")
    cal = sim.layer_calibration(a, b, ds, "linear_cka", 100, 0)
    np.testing.assert_allclose(z, cal.score.to_numpy(), atol=1e-9)
    assert np.nanmax(z) <= 1.0 + 1e-9 and np.nanmin(z) > 0.5  # the same architecture, two seeds: far above chance
    hover = fig["data"][1]["text"][0]
    assert "null:" in hover and "p =" in hover
