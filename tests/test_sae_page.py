"""AppTest tests of the SAE features page (the browser test is tests/test_browser_sae.py).

The decoder map uses PCA here (``sae_map``): UMAP's first call compiles for ~30 s; the browser test
and the library tests cover the rest."""
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis import activations, data, models
from analysis import sae as S

APP = str(Path(__file__).resolve().parent.parent / "app.py")
FAST = dict(kind="topk", expansion=2, k=8, steps=100, lr=3e-3, batch_size=128)

pytestmark = pytest.mark.usefixtures("apptest_navigation")


@pytest.fixture(autouse=True)
def pca_decoder_map(monkeypatch):
    """The page's default decoder map is UMAP; these tests draw PCA (same code path, no compile)."""
    original = S.decoder_map
    monkeypatch.setattr(S, "decoder_map", lambda sae, method="umap", seed=0: original(sae, "pca", seed))


def open_page(**widgets) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("pages/sae.py")
    at.session_state["sae_exp"] = FAST["expansion"]
    at.session_state["sae_k"] = FAST["k"]
    at.session_state["sae_steps"] = FAST["steps"]
    for key, value in widgets.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def metric(at, label: str) -> str:
    return [m for m in at.metric if m.label == label][0].value


def test_default_view_trains_and_shows_metrics_browser_and_matching():
    at = open_page()
    ds = data.load("digits", n=500)
    model = models.load("zoo:mlp-s0")
    layer = model.layers[len(model.layers) // 2]
    sae = S.trained_sae(model, ds, layer, only_cached=True, **FAST)  # the page put it in the store
    assert sae is not None
    acts = activations.extract(model, ds, [layer])[layer]
    ev = S.evaluate(sae, acts)
    assert float(metric(at, "L0")) == pytest.approx(ev.l0, abs=0.05)
    assert float(metric(at, "Var. explained")) == pytest.approx(ev.fve, abs=5e-4)
    titles = [c["layout"].get("title", {}).get("text", "") + " ".join(a.get("text", "") for a in
                                                                    c["layout"].get("annotations", []))
              for c in charts(at)]
    for expected in ("Training curve", "Feature density", "Sparsity vs reconstruction", "Decoder directions",
                     "Match quality"):
        assert any(expected in t for t in titles), (expected, titles)
    # the feature browser opens the densest feature by default
    assert at.number_input(key="sae_feature").value == int(np.argmax(ev.density))
    assert any(m.label == "Loss recovered" for m in at.metric)
    assert not at.error


def test_changing_the_feature_shows_its_statistics():
    at = open_page(sae_match=False)
    at.number_input(key="sae_feature").set_value(3).run()
    assert not at.exception
    assert any("Feature 3" in m.value for m in at.markdown)
    classes = [c for c in charts(at) if "Mean activation per class" in c["layout"].get("title", {}).get("text", "")]
    assert len(classes) == 1 and len(classes[0]["data"][0]["x"]) == 10


def test_a_reload_takes_the_sae_from_the_store():
    open_page(sae_match=False)
    at = open_page(sae_match=False)
    assert any("from the result store" in c.value for c in at.caption)


def test_each_kind_trains_on_the_page():
    for kind in ("relu", "jumprelu", "batchtopk"):
        at = open_page(sae_kind=kind, sae_match=False)
        assert at.selectbox(key="sae_kind").value == kind
        assert float(metric(at, "L0")) > 0


def test_long_training_waits_for_the_button(monkeypatch):
    monkeypatch.setattr(S, "FLOPS_PER_SECOND", 1e6)  # make the estimate huge
    at = open_page(sae_match=False)
    assert any("Will train" in i.value for i in at.info)
    assert not at.metric
    at.button(key="sae_train_A").click().run()
    assert not at.exception
    assert float(metric(at, "L0")) > 0


def test_browsing_b_and_text_models(monkeypatch):
    at = open_page(sae_model="B", sae_match=False)
    assert "B · `" in at.subheader[0].value
    at = open_page(sae_match=False, sae_layer_a="encoder.layer.2", a="hf:minilm", b="hf:minilm-random",
                   data="text", n=60)
    assert not at.exception and not at.error
    assert any("background: rgba" in m.value for m in at.markdown)  # tokens shaded by activation


def test_the_sweep_button_fills_the_frontier():
    at = open_page(sae_match=False)
    at.button(key="sae_sweep").click().run()
    assert not at.exception
    frontier = [c for c in charts(at) if "Sparsity vs reconstruction" in c["layout"].get("title", {}).get("text", "")][0]
    topk = [t for t in frontier["data"] if t.get("name") == "TopK"][0]
    assert len(topk["x"]) == 5  # k = 8 (on show) and the sweep's 4, 16, 32, 64
    assert not [b for b in at.button if b.key == "sae_sweep"]  # nothing left to train


def test_a_feature_index_beyond_the_sae_falls_back_to_the_default():
    at = open_page(sae_match=False, sae_feature=5000, sae_input=10_000)  # 256 latents, 500 inputs
    assert at.number_input(key="sae_feature").value < 256 and at.number_input(key="sae_input").value == 0


def test_an_uploaded_saelens_sae_is_browsed_instead_of_training(tmp_path):
    from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec

    rng = np.random.default_rng(0)
    w = rng.normal(size=(300, 128)).astype(np.float32)
    sae = S.from_arrays({"W_enc": w.T.copy(), "W_dec": w, "b_enc": np.zeros(300, np.float32),
                         "b_dec": np.zeros(128, np.float32)}, "topk", k=5)
    zipped = S.saelens_zip(sae)
    back, _ = S.from_saelens_upload({"sae.zip": zipped}, 128)
    assert np.array_equal(back.arrays()["W_dec"], w)
    with pytest.raises(S.UserInputError, match="reads 128"):
        S.from_saelens_upload({"sae.zip": zipped}, 64)
    at = open_page(sae_match=False)
    rec = UploadedFileRec(file_id="f1", name="sae.zip", type="application/zip", data=zipped)
    at.session_state["sae_upload"] = [UploadedFile(rec, None)]
    at.run()
    assert not at.exception
    assert any("opened from uploaded SAELens files" in c.value for c in at.caption), [c.value for c in at.caption]
    assert "300 latents" in at.subheader[0].value and float(metric(at, "L0")) == pytest.approx(5, abs=0.01)
