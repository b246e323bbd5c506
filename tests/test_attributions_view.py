"""The Attributions view (issue #15): the page and the CLI reach one compute and the same numbers,
which are the library's under the same store keys; an uploaded picture travels as a content-hash id
(never bytes) and is explained next to the samples; coinciding LRP and gradient x input curves are
flagged (issue 20); text models run headless too. The golden values are in tests/test_golden.py."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from analysis import data, lrp, models, views
from analysis.errors import UserInputError
from analysis.spec import AnalysisSpec
from analysis.views import attributions as V
from analysis.views.outputs import headless

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def _spec(**params) -> AnalysisSpec:
    return AnalysisSpec("attributions", {"n": 60, **params})


def _png(ink_columns=slice(28, 36)) -> bytes:
    img = np.full((64, 64), 255, np.uint8)  # a dark stroke on white paper
    img[8:56, ink_columns] = 0
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.usefixtures("apptest_navigation")
def test_the_page_and_the_cli_reach_the_same_compute(monkeypatch, tmp_path):
    from analysis.__main__ import main

    from tests.test_views import _counting

    monkeypatch.setenv("REPLENS_ALLOW_LOCAL_PATHS", "1")  # what main() sets: undone after this test
    seen = _counting(monkeypatch)
    assert main(["attributions", "--n", "60", "--quiet", "--out", str(tmp_path / "cli")]) == 0
    assert seen == ["attributions"]
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())["numbers"]
    cli_maps = json.loads((tmp_path / "cli" / "at_maps_A.json").read_text())
    seen.clear()
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("pages/attributions.py").run()
    at.number_input(key="n").set_value(60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "attributions" in seen  # the page's sections ran through View.compute too (as jobs)
    metric = [m for m in at.metric if m.label.startswith("Rank agreement")][0]
    assert metric.value == f"{cli['rank agreement of A and B (dataset mean)']:.3f}"
    from tests.test_similarity_page import array

    page_maps = json.loads(at.get("plotly_chart")[0].proto.spec)
    for got, want in zip([t for t in page_maps["data"] if t.get("name") == "relevance"],
                         [t for t in cli_maps["data"] if t.get("name") == "relevance"]):
        np.testing.assert_allclose(array(got["z"]), array(want["z"]), rtol=0, atol=1e-12)
    assert page_maps["layout"]["title"]["text"] == cli_maps["layout"]["title"]["text"]


@pytest.mark.parametrize("rule", ["epsilon", "gamma"])
def test_headless_run_gives_the_library_numbers_from_the_same_store_keys(rule):
    """(Moved here from test_lrp.py when the page's runner became this view.)"""
    out = headless(_spec(at_rule=rule, at_samples=["1", "4"]))
    ds = data.load("digits", n=60)
    a, b = (lrp.dataset_relevance(models.load(r), ds, rule=rule) for r in ("zoo:mlp-s0", "zoo:mlp-s1"))
    assert out.numbers["rank agreement of A and B (dataset mean)"] == pytest.approx(
        np.nanmean(lrp.rank_agreement(a["relevance"], b["relevance"])), abs=1e-12)
    assert out.numbers["AOPC A lrp"] > out.numbers["AOPC A random"]
    assert out.numbers["rules"] == lrp.rule_set(rule).description
    assert {"at_maps_A", "at_maps_B", "at_agree", "at_conservation", "at_faith", "at_units"} <= set(out.figures)
    for name, fig in out.figures.items():  # every figure says the rule; the maps say the model and target
        assert f"LRP {rule}" in fig.layout.title.text, name
    assert "zoo:mlp-s1" in out.figures["at_maps_B"].layout.title.text
    assert "predicted class" in out.figures["at_maps_B"].layout.title.text


def test_coinciding_curves_are_flagged_and_drawn_so_both_show():
    """LRP-epsilon with a small epsilon is gradient x input on these ReLU MLPs: the curves coincide,
    and the figure draws LRP wide and pale under a dashed gradient x input; gamma differs."""
    from analysis.figures import attributions as figs

    view = views.get("attributions")
    eps = view.compute(_spec(at_rule="epsilon"), sections=["faithfulness"])
    assert eps.faithfulness.identical == {"A": True, "B": True}
    assert "the same curve as LRP" in " ".join(t.name for t in figs.pixel_flipping(eps, _spec(at_rule="epsilon").params).data)
    gamma = view.compute(_spec(), sections=["faithfulness"])
    assert gamma.faithfulness.identical == {"A": False, "B": False}
    fig = figs.pixel_flipping(gamma, _spec().params)
    lines = {t.name.split(" (")[0]: t.line for t in fig.data}
    assert lines["A: LRP"].width > lines["A: gradient x input"].width and lines["A: gradient x input"].dash == "dash"


def test_an_uploaded_picture_travels_as_an_id_and_is_explained_next_to_the_samples():
    ds = data.load("digits", n=60)
    pid = V.keep_picture(_png(), "one.png", ds)
    assert len(pid) == 16 and all(c in "0123456789abcdef" for c in pid)
    assert V.keep_picture(_png(), "same-picture.png", ds) == pid  # content-addressed
    assert V.keep_picture(_png(slice(10, 20)), "other.png", ds) != pid
    spec = _spec(at_samples=["3"], at_upload=pid)
    assert spec.to_query()["at_upload"] == pid and len(json.dumps(spec.to_json())) < 2000  # an id, never bytes
    result = views.get("attributions").compute(spec, sections=["maps"])
    row = lrp.image_from_upload(_png(), "one.png", ds.image_shape)
    assert result.maps.names == ["#3", "upload"]
    np.testing.assert_array_equal(result.maps.inputs[-1], row[0])
    expected = lrp.attribute(models.load("zoo:mlp-s0"), row, "predicted", rule="gamma")
    np.testing.assert_allclose(result.maps.a.relevance[-1], expected.relevance[0], rtol=1e-6, atol=1e-9)
    # a 'true' target uses each model's prediction for the picture, which has no label
    true = views.get("attributions").compute(_spec(at_samples=["3"], at_upload=pid, at_target="true"),
                                             sections=["maps"])
    assert true.maps.upload_unlabelled and true.maps.a.target[-1] == expected.target[0]


def test_a_picture_this_server_does_not_have_falls_back_with_a_note(tmp_path):
    view = views.get("attributions")
    spec, notes = view.resolve(_spec(at_upload="0123456789abcdef"))
    assert spec.params["at_upload"] is None and "No uploaded file with id" in notes[0]
    with pytest.raises(UserInputError, match="not the id"):
        V.picture(view.context(_spec(at_upload="not-an-id")))
    # a stored file that is not one row of this dataset's pixels is refused, not explained
    from analysis.store import default_store

    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 10), np.float32))
    sha = default_store().put_blob(buf.getvalue(), "odd.npy", V.PICTURE_KIND)
    spec, notes = view.resolve(_spec(at_upload=sha[:16]))
    assert spec.params["at_upload"] is None and "does not fit" in notes[0]


def test_values_of_another_dataset_fall_back_with_a_note():
    view = views.get("attributions")
    spec, notes = view.resolve(_spec(at_class=12, at_samples=["2", "30"]))
    assert spec.params["at_class"] == 0 and spec.params["at_samples"] == ["2"]
    assert any("Class 12" in n for n in notes) and any("30" in n for n in notes)


def test_text_models_run_headless(tiny_bert_dir, monkeypatch):
    monkeypatch.setenv("REPLENS_ALLOW_LOCAL_PATHS", "1")
    ref = f"hf:{tiny_bert_dir}"
    spec = AnalysisSpec("attributions", {"a": ref, "b": ref, "data": "text", "n": 12, "at_sentences": ["0", "1"],
                                         "at_text_dataset": True, "at_rule": "epsilon"})
    out = headless(spec)
    assert {"at_tokens", "at_units", "at_text_agree"} <= set(out.figures)
    assert out.numbers["rank agreement of A's and B's token relevance (mean)"] == pytest.approx(1.0)  # A is B
    m, ds = models.load(ref, allow_local=True), data.load("text", n=12)
    probe = lrp.fit_topic_probe(m, ds)
    expected = lrp.attribute(m, list(ds.inputs[:2]), probe.target("predicted"), rule="epsilon")
    table = out.tables["conservation A"]
    np.testing.assert_allclose(table["explained output f"], np.round(expected.output, 4))
    tokens = out.figures["at_tokens"].data[0]
    real = [t for t, k in zip(expected.tokens[0], expected.mask[0]) if k]
    assert list(tokens.text[: len(real)]) == real
    # each token's box is at least as wide as its text, and boxes on a line never overlap
    for left, width, text in zip(tokens.base, tokens.x, tokens.text):
        assert width >= len(text) + 1
    starts = sorted(zip(tokens.y, tokens.base, tokens.x))
    for (y0, b0, w0), (y1, b1, _) in zip(starts, starts[1:]):
        assert y1 != y0 or b1 >= b0 + w0 - 1e-9
