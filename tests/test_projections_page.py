"""AppTest tests of the Projections page: the two aligned views, colourings, the layer walk on
demand, uploaded coordinates, refusals, the CLI and the page on one compute, and state that never
goes stale after switching models (the lasso linking the views is in test_browser.py)."""
import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from analysis.__main__ import main
from analysis.store import default_store

APP = str(Path(__file__).resolve().parent.parent / "app.py")
pytestmark = pytest.mark.usefixtures("apptest_navigation")


def open_page(**widgets) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.switch_page("pages/projections.py").run()
    for key, value in widgets.items():
        set_widget(at, key, value)
    ok(at)
    return at


def set_widget(at: AppTest, key: str, value) -> None:
    for kind in ("selectbox", "number_input", "toggle", "radio", "select_slider"):
        try:
            getattr(at, kind)(key=key).set_value(value)
        except KeyError:
            continue
        at.run()
        return
    raise KeyError(key)


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def figures(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def coords_of(fig: dict, n: int) -> np.ndarray:
    """A scatter's points in sample order (every point carries its sample index in customdata)."""
    out = np.full((n, 3), np.nan)
    for trace in fig["data"]:
        idx = np.asarray(trace["customdata"], dtype=int)
        for j, axis in enumerate("xyz"):
            if axis in trace:
                out[idx, j] = _array(trace[axis])
    return out[:, ~np.isnan(out).all(0)]


def _array(value) -> np.ndarray:
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=float)


def infos(at: AppTest) -> list[str]:
    """The notes shown, as read (the page escapes markdown in them)."""
    return [re.sub(r"\\(.)", r"\1", i.value) for i in at.info]


def test_default_view_shows_both_views_aligned_and_the_walk_only_on_demand():
    at = open_page()
    figs = figures(at)
    assert len(figs) == 2  # the walk is not computed on page load
    assert len(figs[0]["data"]) == 10 and figs[0]["data"][0]["type"] == "scattergl"  # one trace per digit
    assert "aligned to A" in figs[1]["layout"]["title"]["text"]
    assert {"Neighbourhood agreement (mean)", "Alignment residual", "Variance shown (A, B)"} <= {m.label for m in at.metric}
    assert not default_store().keys("view:projections:walk_a")
    at.toggle(key="walk").set_value(True).run()
    ok(at)
    figs = figures(at)
    assert len(figs) == 3 and "net.logits (aligned to the previous layer)" in figs[2]["layout"]["title"]["text"]
    at.select_slider(key="path_layer").set_value("net.fc1").run()
    ok(at)
    assert "net.fc1" in figures(at)[2]["layout"]["title"]["text"]
    assert not at.error


def test_colour_by_agreement_correctness_and_3d():
    at = open_page(colour="neighbourhood agreement")
    fig = figures(at)[0]
    assert len(fig["data"]) == 1 and fig["data"][0]["marker"]["showscale"]
    set_widget(at, "colour", "A correct")
    assert [t["name"] for t in figures(at)[0]["data"]] == ["wrong", "correct"]
    set_widget(at, "dims", 3)
    ok(at)
    assert figures(at)[0]["data"][0]["type"] == "scatter3d"


def test_switching_model_a_falls_back_to_its_layers_with_a_note():
    at = open_page(proj_a="net.fc1", walk=True)
    set_widget(at, "path_layer", "net.fc2")
    at.selectbox(key="a").set_value("zoo:cnn-s0").run()
    ok(at)
    notes = infos(at)
    assert any("'net.fc1' is not a layer of zoo:cnn-s0" in n for n in notes), notes
    assert any("'net.fc2' is not a layer of zoo:cnn-s0" in n for n in notes), notes
    figs = figures(at)
    assert len(figs) == 3  # never an empty view
    assert "zoo:cnn-s0 · net.logits" in figs[0]["layout"]["title"]["text"]
    assert "zoo:cnn-s0 · net.logits" in figs[2]["layout"]["title"]["text"]
    assert at.selectbox(key="proj_a").value == "net.logits"
    assert not at.error


def test_uploaded_coordinates_replace_a_until_they_no_longer_fit():
    xyz = np.random.default_rng(2).normal(size=(500, 3))
    buf = io.BytesIO()
    np.save(buf, xyz)
    at = open_page()
    at.file_uploader(key="coords_upload").set_value(("xyz.npy", buf.getvalue(), "application/octet-stream")).run()
    ok(at)
    assert any("3 dimensions" in n for n in infos(at))
    assert at.selectbox(key="dims").value == 3 and at.query_params["coords"]
    fig = figures(at)[0]
    assert fig["data"][0]["type"] == "scatter3d"
    np.testing.assert_allclose(coords_of(fig, 500), xyz, rtol=1e-6)
    at.number_input(key="n").set_value(100).run()
    ok(at)
    assert any("500 rows but the data now has 100" in n for n in infos(at))
    assert "net.logits" in figures(at)[0]["layout"]["title"]["text"]


def test_a_bad_coordinates_file_gets_a_message_and_the_view_stays():
    at = open_page()
    at.file_uploader(key="coords_upload").set_value(("xy.csv", b"a,b\n1,2\n3,4\n", "text/csv")).run()
    ok(at)
    assert any("2 rows but the dataset has 500" in e.value for e in at.error)
    assert len(figures(at)) == 2 and "coords" not in at.query_params


def test_agreement_over_the_memory_ceiling_is_refused_and_the_views_still_show(monkeypatch):
    monkeypatch.setenv("REPLENS_MEMORY_LIMIT_MB", "3")  # the agreement needs 24 * 500^2 bytes = 6 MB
    at = open_page(colour="neighbourhood agreement")
    assert any("neighbourhood agreement" in e.value and "fewer samples" in e.value for e in at.error)
    assert len(figures(at)) == 2
    assert any("not computed" in n for n in infos(at))
    assert "Neighbourhood agreement (mean)" not in {m.label for m in at.metric}


def test_the_cli_and_the_page_reach_one_compute(tmp_path, monkeypatch):
    from analysis.views.base import View

    assert __import__("importlib.util").util.find_spec("analysis.runners") is None
    pages = []
    original = View.compute
    monkeypatch.setattr(View, "compute", lambda self, *a, **k: pages.append(self.page) or original(self, *a, **k))
    at = open_page(proj_a="net.fc2")
    assert "projections" in pages  # the page's jobs ran the view's compute
    drawn_a, drawn_b = (coords_of(f, 500) for f in figures(at)[:2])
    keys = set(default_store().keys())
    pages.clear()
    assert main(["projections", "--proj-a", "net.fc2", "--proj-b", "net.logits", "--out", str(tmp_path),
                 "--quiet"]) == 0
    assert pages == ["projections"] and set(default_store().keys()) == keys  # same sections, nothing new
    table = pd.read_csv(tmp_path / "coordinates.csv")
    np.testing.assert_allclose(table[["a1", "a2"]].to_numpy(), drawn_a, rtol=1e-12)
    np.testing.assert_allclose(table[["b1", "b2"]].to_numpy(), drawn_b, rtol=1e-12)
