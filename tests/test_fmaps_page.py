"""AppTest tests of the Functional maps page (the browser test is test_browser_fmaps.py): the default
view, buttons for long sections, refusals over the server's ceiling, and views that stay whole
when model A or B changes under them."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis import views
from tests.test_similarity_page import _widget, array  # noqa: F401  (shared AppTest helpers)

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGE = "pages/functional_maps.py"

pytestmark = pytest.mark.usefixtures("apptest_navigation")


@pytest.fixture(autouse=True)
def sections_run_without_a_button(monkeypatch):
    """Sections estimated under a minute run at once here: what the page draws must not depend on
    how busy the test machine is (estimates learn from the runs before them). Tests of the
    buttons make the estimates long instead."""
    from analysis.jobs import estimates
    from pages import _jobs

    monkeypatch.setattr(_jobs, "AUTO_RUN_S", 60.0)
    monkeypatch.setattr(estimates, "correction", lambda kind: 1.0)


def open_page(n: int = 200, **widgets) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.number_input(key="n").set_value(n)
    at.run()
    at.switch_page(PAGE).run()
    for key, value in widgets.items():
        _widget(at, key).set_value(value)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_link(query: dict) -> AppTest:
    """The page as a share link opens it: the sidebar's and the page's values before the first run
    of the page (AppTest needs one run of another page before it can switch by url path)."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("pages/report.py")
    for step in ("sidebar", "page"):
        for k, v in query.items():
            at.query_params[k] = v
        at.run()
        if step == "sidebar":
            at.switch_page(PAGE)
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def titled(at, start: str) -> dict:
    found = [f for f in figures(at) if f["layout"]["title"]["text"].startswith(start)]
    assert found, (start, [f["layout"]["title"]["text"] for f in figures(at)], text(at.error), text(at.info))
    return found[0]


def metric(at, label: str) -> float:
    return float(next(m.value for m in at.metric if m.label == label))


def text(elements) -> list[str]:
    return [e.value.replace("\\", "") for e in elements]  # markdown escapes, as the page sends them


def test_default_view_penultimate_layers_map_and_stitching():
    at = open_page()
    assert at.selectbox(key="fm_layer_a").value == "net.relu3"  # penultimate of the MLP
    assert at.selectbox(key="fm_layer_b").value == "net.relu3"
    assert at.multiselect(key="fm_descr").value == ["geodesic"]
    heat = titled(at, "Functional map C")["data"][0]
    assert heat["type"] == "heatmap" and array(heat["z"]).shape == (50, 50)  # K x K
    stitch = titled(at, "Zero-shot stitching: A zoo:mlp-s0 · net.relu3 → B zoo:mlp-s1 · net.relu3")
    names = [t.get("name") for t in stitch["data"]]
    assert names[:4] == ["ortho", "linear", "l-ortho", "affine"]
    # the two reference scores are legend entries (they never print on top of each other)
    upper = next(t for t in stitch["data"] if t["name"].startswith("B's layer → B's head"))
    lower = next(t for t in stitch["data"] if t["name"].startswith("A's layer → B's head, untranslated"))
    assert array(lower["y"])[0] < 0.5 < array(upper["y"])[0]
    assert not [n for n in names if n.startswith("anchors = A's active units")]  # 103 > 100, the last count
    assert 0.3 < metric(at, "LFM similarity") <= 1.0
    assert 0 <= metric(at, "Same class") <= 1
    embed = titled(at, "Spectral embeddings")["layout"]
    assert embed["xaxis"]["title"]["text"] == embed["xaxis2"]["title"]["text"] == "Laplacian eigenvector 1"
    assert embed["yaxis"]["title"]["text"] == "Laplacian eigenvector 2"
    for f in figures(at):  # every figure says what it shows and for which models
        assert "zoo:mlp-s0" in f["layout"]["title"]["text"], f["layout"]["title"]["text"]
    captions = " ".join(c.value for c in at.caption)
    assert "It is not a ceiling" in captions and "dip near that count" not in captions


def test_same_model_reads_one_and_matches_every_sample():
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.number_input(key="n").set_value(150)
    at.selectbox(key="b").set_value("zoo:mlp-s0")
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    assert metric(at, "LFM similarity") == pytest.approx(1.0, abs=1e-6)
    assert metric(at, "Same sample") > 0.9


def test_buttons_run_retrieval_and_robustness(monkeypatch):
    from pages import _jobs

    monkeypatch.setattr(_jobs, "AUTO_RUN_S", 0.0)  # every section counts as long: each waits for its button
    at = open_page(n=120)
    labels = [b.label for b in at.button]
    assert {"Compute", "Compute stitching", "Compute retrieval", "Compute robustness"} <= set(labels), labels
    assert any(i.startswith("Will compute retrieval") for i in text(at.info))
    assert not figures(at)
    for label in ("Compute", "Compute retrieval", "Compute robustness"):
        next(b for b in at.button if b.label == label).click()
        at.run()
    assert "Compute stitching" in [b.label for b in at.button] and not any(
        f["layout"]["title"]["text"].startswith("Zero-shot") for f in figures(at))  # not clicked: not run
    assert not at.exception, [e.value for e in at.exception]
    names = {t.get("name") for f in figures(at) for t in f["data"]}
    assert {"LFM + ortho (dense matches)", "ortho on the anchors alone", "relative representations"} <= names
    rob = titled(at, "Robustness: A zoo:mlp-s0 · net.relu3 against a copy with class 0 moved")
    lfm = next(t for t in rob["data"] if t["name"] == "LFM similarity")
    assert array(lfm["y"])[0] == pytest.approx(1.0)  # no shift: identical layers


def test_moving_another_class_recomputes_only_the_robustness_sweep():
    from analysis.store import default_store

    at = open_page(n=120)
    store = default_store()
    counts = lambda: {s: len(store.keys(f"functional-maps-{s}"))  # noqa: E731
                      for s in ("fit", "stitching", "retrieval", "robustness")}
    before = counts()
    at.selectbox(key="fm_class").set_value("3").run()
    after = counts()
    assert after == dict(before, robustness=before["robustness"] + 1), (before, after)
    assert "class 3 moved" in titled(at, "Robustness")["layout"]["title"]["text"]


def test_ground_truth_map_and_too_many_anchors_are_capped_with_a_note():
    at = open_page(n=100, fm_truth=True, fm_anchors=80)
    assert any(i.startswith("Ground-truth map") for i in text(at.info))
    assert "ground truth Φ_Bᵀ Φ_A" in titled(at, "Functional map C")["layout"]["title"]["subtitle"]["text"]
    assert any("more than half of the 100 samples: using 50" in i for i in text(at.info))
    assert at.number_input(key="fm_anchors").value == 50  # the address bar and the view agree
    assert metric(at, "Same sample") > 0.1


def test_largest_settings_wait_for_a_button_or_are_refused_never_start():
    """Issue #14: the largest settings used to start at once and keep 2 cores busy for over 21 minutes."""
    from analysis.spec import AnalysisSpec

    query = {"data": "digits", "split": "all", "n": "1797", "fm_anchors": "5000", "fm_k": "1000", "fm_eigs": "200",
             "fm_descr": ["geodesic", "labels", "hks"], "fm_select": "farthest-point"}
    at = open_link(query)
    errors, infos = text(at.error), text(at.info)
    assert any("the functional map (1,797 samples) would take about" in e and "over this server" in e for e in errors), errors
    for section, asked in (("the retrieval sweep", "Will compute retrieval"),
                           ("the robustness sweep", "Will compute the robustness sweep")):
        refused = any(section in e and "over this server" in e for e in errors)
        assert refused or any(i.startswith(asked) for i in infos), (section, errors, infos)
    assert not any(f["layout"]["title"]["text"].startswith(("Functional map C", "Retrieval", "Robustness"))
                   for f in figures(at))
    view = views.get("functional-maps")
    spec, notes = view.resolve(AnalysisSpec.from_query("functional-maps", query)[0])
    assert any("using 898" in n for n in notes)
    assert {"fit", "retrieval", "robustness"} <= set(view.peek(spec)[1])  # none of them ran


def test_a_section_over_the_ceiling_is_refused_with_the_way_around(monkeypatch):
    monkeypatch.setenv("REPLENS_MAX_JOB_S", "1")
    at = open_page(n=200)
    errors = text(at.error)
    assert any("over this server" in e and "fewer samples, neighbours or eigenvectors" in e for e in errors), errors
    assert not figures(at) or all(not f["layout"]["title"]["text"].startswith("Functional map C") for f in figures(at))


def test_too_few_samples_is_one_message():
    at = open_page(n=10)
    assert text(at.error) == ["Functional maps need at least 20 samples (the dataset has 10); raise Samples in the "
                              "sidebar."]
    assert not figures(at)


# ------------------------------------------------------------------ stale state
def test_switching_model_a_to_one_without_the_chosen_layer_falls_back_with_a_note():
    at = open_page(n=120, fm_layer_a="net.fc2", fm_layer_b="net.relu1")
    assert titled(at, "Functional map C: A zoo:mlp-s0 · net.fc2 → B zoo:mlp-s1 · net.relu1")
    at.selectbox(key="a").set_value("zoo:cnn-s0").run()
    assert not at.exception, [e.value for e in at.exception]
    notes = text(at.info)
    assert any("'net.fc2' is not a layer of zoo:cnn-s0 (model A)" in n for n in notes), notes
    assert at.selectbox(key="fm_layer_a").value == "net.gap"  # the CNN's penultimate layer
    assert at.selectbox(key="fm_layer_b").value == "net.relu1"  # B's choice still fits B: kept
    title = titled(at, "Functional map C")["layout"]["title"]["text"]
    assert title == "Functional map C: A zoo:cnn-s0 · net.gap → B zoo:mlp-s1 · net.relu1"


def test_switching_model_b_to_an_autoencoder_uses_its_bottleneck():
    at = open_page(n=120, fm_layer_b="net.fc2")
    at.selectbox(key="b").set_value("zoo:mlp-ae-b8").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("'net.fc2' is not a layer of zoo:mlp-ae-b8 (model B)" in n for n in text(at.info))
    assert at.selectbox(key="fm_layer_b").value == "encoder.bottleneck"
    assert "B zoo:mlp-ae-b8 · encoder.bottleneck" in titled(at, "Functional map C")["layout"]["title"]["text"]
    stitch = titled(at, "Zero-shot stitching")
    assert "probe" in stitch["layout"]["title"]["subtitle"]["text"]  # an autoencoder has no classifier head


def test_a_class_that_is_not_in_the_data_falls_back_to_the_first_with_a_note():
    at = open_link({"n": "120", "fm_class": "sports"})  # e.g. a link made on the text set
    assert any("'sports' is not a class of the dataset 'digits'" in n for n in text(at.info)), text(at.info)
    assert at.selectbox(key="fm_class").value == "0"
    assert "class 0 moved" in titled(at, "Robustness")["layout"]["title"]["text"]
