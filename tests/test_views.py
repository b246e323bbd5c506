"""One pipeline per view (issue #15): the page and the CLI reach the same compute, pages hold no
second orchestration, and state never goes stale when the sidebar changes."""
import ast
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis import views
from analysis.views.base import View
from analysis.spec import AnalysisSpec

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
pytestmark = pytest.mark.usefixtures("apptest_navigation")

# Library entry points that compute: a page calling one of them would be a second orchestration.
COMPUTE = {"extract", "layer_similarity", "similarity_matrix", "cell_statistics", "stability_curve", "project",
           "layer_path", "fit_arrays", "stitch_models", "retrieval_curve", "robustness_curve", "train_sae",
           "trained_sae", "attribute", "faithfulness", "analyse", "ood_scores", "evaluate", "pooled_dims",
           "per_class_similarity", "knn_agreement", "layer_table"}
STORE = {"default_store", "make_key", "digest", "cached", "put", "get_doc"}


def _calls(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return names


@pytest.mark.parametrize("page", views.pages())
def test_a_page_on_its_view_computes_nothing_itself(page):
    path = ROOT / "pages" / f"{views.MODULES[page]}.py"
    calls = _calls(path)
    assert not calls & COMPUTE, f"{path.name} computes: {sorted(calls & COMPUTE)}"
    assert not calls & STORE, f"{path.name} reads or writes the store itself: {sorted(calls & STORE)}"
    assert len(path.read_text().splitlines()) <= 220, f"{path.name} is no longer a thin page (about 200 lines)"


def _counting(monkeypatch):
    seen = []
    original = View.compute

    def compute(self, spec, *a, **k):
        seen.append(spec.page)
        return original(self, spec, *a, **k)

    monkeypatch.setattr(View, "compute", compute)
    return seen


def test_the_page_and_the_cli_reach_the_same_compute(monkeypatch, tmp_path, capsys):
    from analysis.__main__ import main

    seen = _counting(monkeypatch)
    assert main(["similarity", "--quiet", "--out", str(tmp_path / "cli")]) == 0
    assert seen == ["similarity"]
    import pandas as pd

    cli = pd.read_csv(tmp_path / "cli" / "similarity_AB.csv", index_col=0)
    seen.clear()
    monkeypatch.setenv("REPLENS_STORE", str(tmp_path / "page-store"))  # the page computes, not reads the CLI's
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/similarity.py").run()
    assert "similarity" in seen  # the page's sections ran through View.compute too (as jobs)
    import json

    import numpy as np

    from tests.test_similarity_page import array

    heat = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    np.testing.assert_allclose(array(heat["z"]), cli.to_numpy(), atol=1e-12)


def _open(page_file: str, **sidebar) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page(page_file).run()
    for key, value in sidebar.items():
        at.selectbox(key=key).set_value(value).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_similarity_layers_of_a_previous_model_fall_back_with_a_note():
    at = _open("pages/similarity.py")
    at.multiselect(key="layers_a").set_value(["net.fc1", "net.fc2"]).run()
    at.selectbox(key="cell_a").set_value("net.fc2").run()
    at.selectbox(key="a").set_value("zoo:cnn-s0").run()
    assert not at.exception, [e.value for e in at.exception]
    notes = " ".join(i.value for i in at.info)
    assert "not a layer of zoo:cnn-s0" in notes.replace("\\", "")
    for _ in range(3):  # a busy machine's estimate may pass the auto-run limit: press what waits
        waiting = [b for b in at.button if b.label == "Compute"]
        if not waiting:
            break
        waiting[0].click().run()
    heat = at.get("plotly_chart")[0].proto.spec
    assert "conv1" in heat and not any("Select at least one layer" in w.value for w in at.warning)
    assert at.selectbox(key="cell_a").value.startswith("net.") and at.selectbox(key="cell_a").value in \
        [*__import__("analysis.models", fromlist=["load"]).load("zoo:cnn-s0").layers]


def test_a_text_model_with_digits_offers_the_text_set():
    at = _open("pages/similarity.py")
    at.selectbox(key="a").set_value("hf:minilm").run()
    assert len(at.error) == 1 and "reads text" in at.error[0].value
    offer = [b for b in at.button if "'text' dataset" in b.label][0]
    assert "hf:minilm-random as model B" in offer.label
    offer.click().run()
    assert at.selectbox(key="data").value == "text" and at.selectbox(key="b").value == "hf:minilm-random"
    assert not at.error and (at.get("plotly_chart") or any("Will compute" in i.value for i in at.info))


def test_share_stays_when_a_page_waits_for_its_button(monkeypatch):
    from analysis import similarity as sim

    monkeypatch.setattr(sim.cost, "FLOPS_PER_SECOND", 3e7)  # a long run: the page stops at its button
    at = _open("pages/similarity.py")
    assert any("Will compute" in i.value for i in at.info)
    assert any(p.proto.popover.label == "Share this view" for p in at.get("popover"))


def test_auto_pooling_flattens_small_convolutions_and_says_so(tmp_path):
    """Issue 20: the spatial mean hides where a CNN's features are (CKA 0.12 between conv1 and an
    MLP's fc1); the default pooling flattens convolutions of up to 4,096 values (0.91, the same as
    'flatten'), and the page's note names the rule each layer got."""
    view = views.get("similarity")
    got = {}
    for pooling in ("auto", "mean", "flatten"):
        m = view.compute(AnalysisSpec("similarity", {"a": "zoo:cnn-s0", "b": "zoo:mlp-s0", "pooling": pooling}),
                         sections=["matrices"]).matrices
        got[pooling] = (m.ab.loc["net.conv1", "net.fc1"], view.module.pooling_note(m, pooling))
    assert got["auto"][0] == pytest.approx(got["flatten"][0], abs=1e-12)
    assert got["auto"][0] > got["mean"][0] + 0.5
    assert "flattened (at most 4,096 values) for A net.conv1" in got["auto"][1]
    assert "spatial mean for A net.conv1" in got["mean"][1] and "the other layers as they are" in got["mean"][1]
    assert AnalysisSpec("similarity", {}).params["pooling"] == "auto"
