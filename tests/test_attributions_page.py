"""AppTest tests of the Attributions page: the maps, tables and metrics show the library's numbers
(the default rule is LRP-gamma, issue 20), the bias convention and the notes are on the page, and a
model that no longer fits falls back with a note (issue 15)."""
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis import data, lrp, models
from tests.test_similarity_page import array  # Plotly typed arrays -> numpy

APP = str(Path(__file__).resolve().parent.parent / "app.py")

pytestmark = pytest.mark.usefixtures("apptest_navigation")


def open_page(**widgets) -> AppTest:
    """The page with widgets (by key) set as a user would, in order."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("pages/attributions.py").run()
    for key, value in widgets.items():
        widget(at, key).set_value(value)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def widget(at, key):
    for kind in ("selectbox", "number_input", "multiselect", "toggle", "text_input", "select_slider"):
        try:
            return getattr(at, kind)(key=key)
        except KeyError:
            continue
    raise KeyError(key)


def charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def relevance_maps(fig) -> list[np.ndarray]:
    return [array(t["z"]) for t in fig["data"] if t.get("name") == "relevance"]


def compute(at) -> AppTest:
    """Press the page's Compute buttons (long sections wait for one) until none is left."""
    for _ in range(4):
        buttons = [b for b in at.button if b.label == "Compute"]
        if not buttons:
            break
        buttons[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_default_view_shows_both_models_maps_with_the_library_numbers():
    at = compute(open_page())  # a busy machine's estimates may pass the auto-run limit
    figs = charts(at)
    ds = data.load("digits", n=500)
    x = ds.inputs[:6]
    for fig, ref in zip(figs[:2], ("zoo:mlp-s0", "zoo:mlp-s1")):
        maps = relevance_maps(fig)
        assert len(maps) == 6
        expected = lrp.attribute(models.load(ref), x, "predicted", rule="gamma")
        np.testing.assert_allclose(np.stack(maps).reshape(6, -1), expected.relevance, rtol=1e-6, atol=1e-9)
        heat = [t for t in fig["data"] if t.get("name") == "relevance"][0]
        assert heat["zmid"] == 0 and heat["zmin"] == -heat["zmax"]  # diverging scale centred on 0
    table = at.dataframe[0].value
    expected = lrp.attribute(models.load("zoo:mlp-s0"), x, "predicted", rule="gamma")
    np.testing.assert_allclose(table["explained output f"], np.round(expected.output, 4))
    np.testing.assert_allclose(table["sum of relevance"], np.round(expected.relevance_sum, 4))
    metric = [m for m in at.metric if m.label.startswith("Rank agreement")][0]
    full = [lrp.dataset_relevance(models.load(r), ds, rule="gamma")["relevance"] for r in ("zoo:mlp-s0", "zoo:mlp-s1")]
    assert float(metric.value) == pytest.approx(np.nanmean(lrp.rank_agreement(*full)), abs=1e-3)
    titles = [f["layout"].get("title", {}).get("text", "") for f in figs]
    assert any("Agreement" in t for t in titles) and any("Sum of relevance" in t for t in titles)
    for t in titles:  # every figure says which rule (and where it shows models, which ones)
        assert "LRP gamma (γ=0.25, ε=1e-06)" in t, t
    assert "zoo:mlp-s0" in titles[0] and "predicted class" in titles[0] and "zoo:mlp-s1" in titles[1]
    aopc = [d for d in at.dataframe if "AOPC A" in d.value.columns][0].value
    faith = lrp.dataset_faithfulness(models.load("zoo:mlp-s0"), ds, n=100, rule="gamma")
    assert aopc["AOPC A"][0] == pytest.approx(faith.aopc["lrp"], abs=1e-3)
    assert aopc["AOPC A"][0] > 1.5 * aopc["AOPC A"][2]  # LRP beats the random order
    assert not at.error


def test_rule_target_samples_and_hidden_layer_follow_the_widgets():
    at = open_page(n=100, at_samples=["7", "2"], at_layer_a="net.relu1", at_target="class", at_class=3,
                   at_rule="epsilon-gamma-box")
    ds = data.load("digits", n=100)
    m = models.load("zoo:mlp-s0")
    expected = lrp.attribute(m, ds.inputs[[7, 2]], 3, composite="epsilon-gamma-box")
    fig = charts(at)[0]
    np.testing.assert_allclose(np.stack(relevance_maps(fig)).reshape(2, -1), expected.relevance, rtol=1e-6,
                               atol=1e-9)
    assert [a["text"] for a in fig["layout"]["annotations"] if "→" in a.get("text", "")] == \
        ["#7 → class 3", "#2 → class 3"]
    units = [f for f in charts(at) if any("net.relu1" in a.get("text", "") for a in f["layout"].get("annotations", []))]
    assert units
    bars = units[0]["data"][0]
    layer = lrp.attribute(m, ds.inputs[[7, 2]], 3, composite="epsilon-gamma-box", layer="net.relu1")
    per_unit = lrp.unit_relevance(layer.relevance).mean(0)
    top = int(bars["x"][0])
    assert top == int(np.argmax(np.abs(per_unit)))
    assert array(bars["y"])[0] == pytest.approx(per_unit[top], rel=1e-6)
    # zennit's EpsilonGammaBox is epsilon on an MLP: the page says why (Attribution.notes)
    assert any("first convolution only" in i.value for i in at.info)


def test_the_bias_convention_is_a_widget_and_the_page_says_which_is_used():
    at = open_page(n=60)
    caption = " ".join(c.value for c in at.caption).replace("\\", "")
    assert lrp.BIAS_CONVENTIONS[True] in caption and lrp.BIAS_CONVENTIONS[False] not in caption
    widget(at, "at_bias").set_value(False)
    at.run()
    caption = " ".join(c.value for c in at.caption).replace("\\", "")
    assert lrp.BIAS_CONVENTIONS[False] in caption
    x = data.load("digits", n=60).inputs[:6]
    expected = lrp.attribute(models.load("zoo:mlp-s0"), x, "predicted", rule="gamma", bias=False)
    np.testing.assert_allclose(np.stack(relevance_maps(charts(at)[0])).reshape(6, -1), expected.relevance,
                               rtol=1e-6, atol=1e-9)
    assert "no biases" in charts(at)[0]["layout"]["title"]["text"]
    table = at.dataframe[0].value  # without biases every layer passes on all it receives: sum(R) = f
    np.testing.assert_allclose(table["ΣR / f"], 1.0, atol=1e-3)


def test_a_layer_of_a_previous_model_falls_back_with_a_note():
    at = open_page(at_layer_a="net.fc2", a="zoo:cnn-s0")
    notes = " ".join(i.value for i in at.info).replace("\\", "")
    assert "not a layer of zoo:cnn-s0" in notes
    assert widget(at, "at_layer_a").value == "net.gap"  # the CNN's last layer before its output
    units = [f for f in charts(at) if f["layout"]["title"]["text"].startswith("Relevance at a hidden layer")][0]
    assert any("zoo:cnn-s0 · net.gap" in a.get("text", "") for a in units["layout"]["annotations"])
    assert len(relevance_maps(charts(at)[0])) == 6 and not at.error


def test_a_model_that_cannot_be_explained_is_a_message():
    at = open_page(b="zoo:mlp-ae-b8")
    assert any("autoencoder" in e.value for e in at.error)
    assert not at.exception


def test_text_models_show_token_relevance_for_a_topic_and_a_similarity():
    at = compute(open_page(n=40, data="text", a="hf:minilm", b="hf:minilm-random", at_sentences=["0", "1"]))
    figs = charts(at)
    tokens = [f for f in figs if f["data"] and f["data"][0].get("name") == "tokens"]
    assert len(tokens) == 1 and len(tokens[0]["layout"]["yaxis"]["ticktext"]) == 4  # 2 sentences x (A, B)
    ds = data.load("text", n=40)
    m = models.load("hf:minilm")
    probe = lrp.fit_topic_probe(m, ds)
    expected = lrp.attribute(m, list(ds.inputs[:2]), probe.target("predicted"), rule="gamma")
    real = [t for t, k in zip(expected.tokens[0], expected.mask[0]) if k]
    assert tokens[0]["data"][0]["text"][: len(real)] == real  # every token whole, in order
    assert "probe's intercept" in " ".join(c.value for c in at.caption)
    table = at.dataframe[0].value
    np.testing.assert_allclose(table["explained output f"], np.round(expected.output, 4), atol=2e-4)
    assert any(m.label.startswith("Rank agreement") for m in at.metric)
    widget(at, "at_text_target").set_value("similarity")
    compute(at.run())
    pair = [f for f in charts(at) if f["data"] and f["data"][0].get("name") == "tokens"][0]
    assert "alike" in pair["layout"]["title"]["subtitle"]["text"] and "hf:minilm-random" in pair["layout"]["title"]["text"]
    assert len(pair["layout"]["yaxis"]["ticktext"]) == 4  # (sentence 1, sentence 2) x (A, B)
    assert any(m.label.startswith("Cosine similarity") for m in at.metric)
    caption = " ".join(c.value for c in at.caption)
    assert "intercept" not in caption and "probe" not in caption  # no probe in similarity mode
