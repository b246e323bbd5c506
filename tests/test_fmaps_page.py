"""AppTest tests of the Functional maps page (the browser test is test_browser_fmaps.py)."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.test_similarity_page import _widget, array  # noqa: F401  (shared AppTest helpers)

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGE = "pages/functional_maps.py"

pytestmark = pytest.mark.usefixtures("apptest_navigation")


def open_page(n: int = 200, **widgets) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.number_input(key="n").set_value(n)
    at.run()
    at.switch_page(PAGE).run()
    for key, value in widgets.items():
        _widget(at, key).set_value(value)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def metric(at, label: str) -> float:
    return float(next(m.value for m in at.metric if m.label == label))


def test_default_view_penultimate_layers_map_and_stitching():
    at = open_page()
    assert at.selectbox(key="fm_layer_a").value == "net.relu3"  # penultimate of the MLP
    assert at.selectbox(key="fm_layer_b").value == "net.relu3"
    assert at.multiselect(key="fm_descr").value == ["geodesic"]
    figs = figures(at)
    # C heatmap, spectra, spectral embeddings, stitching (then retrieval when it is quick enough)
    assert len(figs) >= 4
    heat = figs[0]["data"][0]
    assert heat["type"] == "heatmap" and heat["colorscale"][0][1] is not None
    assert array(heat["z"]).shape == (50, 50)  # K x K
    titles = [t.get("name") for t in figs[3]["data"]]
    assert titles == ["ortho", "linear", "l-ortho", "affine"]
    bounds = sorted(s["y0"] for s in figs[3]["layout"]["shapes"])
    assert len(bounds) == 2 and bounds[0] < 0.5 < bounds[1]  # untranslated below, B's own accuracy above
    sim = metric(at, "LFM similarity")
    assert 0.3 < sim <= 1.0
    assert 0 <= metric(at, "Same class") <= 1
    labels = [b.label for b in at.button]
    assert any(lbl.startswith("Compute retrieval") for lbl in labels) or len(figs) > 4


def test_same_model_reads_one_and_matches_every_sample():
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.number_input(key="n").set_value(150)
    at.selectbox(key="b").set_value("zoo:mlp-s0")
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    assert metric(at, "LFM similarity") == pytest.approx(1.0, abs=1e-6)
    assert metric(at, "Same sample") > 0.9


def test_buttons_run_retrieval_and_robustness():
    at = open_page(n=120)
    for label in ("Compute retrieval", "Compute robustness"):
        btn = [b for b in at.button if b.label.startswith(label)]
        if btn:
            btn[0].click()
            at.run()
    assert not at.exception, [e.value for e in at.exception]
    figs = figures(at)
    names = {t.get("name") for f in figs for t in f["data"]}
    assert {"LFM + ortho (dense matches)", "ortho on the anchors alone", "relative representations"} <= names
    rob = next(f for f in figs if any(t.get("name") == "LFM similarity" for t in f["data"]))
    lfm = next(t for t in rob["data"] if t["name"] == "LFM similarity")
    assert array(lfm["y"])[0] == pytest.approx(1.0)  # no shift: identical layers


def test_no_descriptor_uses_ground_truth_and_too_many_anchors_are_capped():
    at = open_page(n=100, fm_descr=[], fm_anchors=80)
    assert any("ground-truth" in i.value for i in at.info)
    assert any("more than half" in w.value for w in at.warning)
    assert metric(at, "Same sample") > 0.1
